"""Benchmarks and benchmark-only code (run as python -m bench.<name>); may import anything in backend."""
