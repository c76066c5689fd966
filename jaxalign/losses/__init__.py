"""Objectives: pure loss functions over embeddings and log-probabilities."""
