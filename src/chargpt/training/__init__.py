"""Training: the one entry, the loop, the time budget, evaluation and the optimizers."""
