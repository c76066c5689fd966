"""Evaluation of embeddings and models."""
