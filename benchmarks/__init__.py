"""Benchmarks of svd_core against diffusers; see benchmarks/README.md. Not part of the package."""
