"""Offline builders of tiny models, shared by the tests and the benchmarks."""
