"""Streaming inference over the exported SLTnet engines."""
