"""Benchmarks of the p2pmarl runtime; each module is a script, run as ``python -m bench.NAME``."""
