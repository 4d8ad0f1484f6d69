"""Helpers shared by the tests and the benchmarks (real local servers, no mocks)."""
