"""Tests for recsys.simulator."""
