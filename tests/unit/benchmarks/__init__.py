"""Tests for the benchmark drivers under benchmarks/ (importable as the benchmarks package)."""
