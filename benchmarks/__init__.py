"""Benchmarks that print and record figures: run each as ``python benchmarks/NAME.py`` (or
``python -m benchmarks.NAME``); tests import them as ``benchmarks.NAME``."""
