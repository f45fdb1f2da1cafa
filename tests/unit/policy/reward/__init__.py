"""Tests for recsys.policy.reward."""
