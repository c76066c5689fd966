"""Errors of checkpoints that load but describe a model jaxalign has no module for."""


class UnsupportedModelError(ValueError):
    """A checkpoint whose architecture jaxalign has no module for."""
