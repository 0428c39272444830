"""Runs on disk: the run directory, listing runs, checkpoints, plots and provenance."""
