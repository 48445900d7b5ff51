"""The triangle_nb benchmark suite: `python -m benchmarks.run` writes BENCHMARKS.md (see benchmarks/run.py)."""
