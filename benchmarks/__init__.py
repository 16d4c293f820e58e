"""Benchmarks: each module runs with `python -m benchmarks.<name>` and writes JSON to benchmarks/out/."""
