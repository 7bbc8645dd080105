"""Losses, the training step, and (later) the pretraining and tuning loops."""
