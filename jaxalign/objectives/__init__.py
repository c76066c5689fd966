"""Objectives as plug-ins of the training engine: what to embed, which head, which loss."""
