"""Tests for recsys.policy."""
