"""SLTnet model components (docs/method.md)."""
