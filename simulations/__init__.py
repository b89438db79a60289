"""Experiment layer: Hydra configs, the ``peerkd`` command and its runners."""
