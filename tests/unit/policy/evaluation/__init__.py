"""Tests for recsys.policy.evaluation."""
