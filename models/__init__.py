"""Keras model builders, imbalance strategies, ensembles and metrics (no Prefect here)."""
