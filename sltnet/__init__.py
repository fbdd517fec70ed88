"""SLTnet video object detection: model, data, training and evaluation."""

__version__ = "0.1.0"
