"""SLTnet model components (DESIGN Part A)."""
