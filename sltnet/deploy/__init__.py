"""The deployment split as PyTorch modules (docs/deployment.md): the frame engine, the temporal
engine and their static-shape steps. ``export`` traces them into ONNX graphs; the runtime's torch
backend runs them as they are."""
