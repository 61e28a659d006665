"""Benchmarks and the GPU acceptance harness (see benchmarks/README.md).

Run a script by its path (``python benchmarks/bench_all.py``) or as a module (``python -m benchmarks.bench_all``);
tests import it as ``benchmarks.<name>``. Nothing in ``vqdiff`` imports from here.
"""
