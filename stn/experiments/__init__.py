"""Experiment drivers: what a pipeline rule runs, by name."""
