"""Benchmarks for gemma4u (see BENCHMARKS.md): `python -m benchmarks.bench [--quick]`."""
