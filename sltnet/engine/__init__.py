"""Training machinery: solver, checkpoints, the training loop."""
