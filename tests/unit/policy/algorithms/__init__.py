"""Tests for recsys.policy.algorithms."""
