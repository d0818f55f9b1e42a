"""Benchmarks for sla-daemon, run as modules: ``python -m benchmarks.<name>``."""
