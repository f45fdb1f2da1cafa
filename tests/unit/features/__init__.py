"""Tests of the event fold, the compact state and the featurisers."""
