"""Tests for recsys.policy.training."""
