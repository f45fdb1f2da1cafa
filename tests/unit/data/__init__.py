"""Tests for recsys.data."""
