"""Splits a trained SLTnet into a frame engine and a temporal engine (ONNX, TensorRT)."""
