"""Trackers: Weights & Biases and TensorBoard behind one protocol."""
