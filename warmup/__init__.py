"""Benchmarks and the tools they share (a local worker driven through its real entry point)."""
