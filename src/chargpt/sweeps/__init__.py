"""Sweeps: many ordinary runs of one dataset under one trial budget, searched by an Optuna study (`chargpt sweep`,
`chargpt.sweep`). space.py reads the search space, study.py keeps the study, trial.py makes a trial a run,
report.py shows the result and entry.py drives the workers."""
