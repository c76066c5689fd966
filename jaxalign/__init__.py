"""jaxalign: JAX/Flax training for alignment objectives (contrastive embeddings, preference optimisation)."""

import logging

__version__ = "0.1.0"


def _not_torch_advisory(record: logging.LogRecord) -> bool:
    """Drops transformers' "PyTorch was not found" advisory, and nothing else.

    transformers logs it when it is imported without torch. jaxalign uses transformers for
    tokenizers and configs only and never needs torch, so on a machine without torch (the
    quickstart's) it would be the first line of every command, and a false alarm.
    """
    return not record.getMessage().startswith("PyTorch was not found")


# On the logger before any jaxalign module imports transformers (the advisory is logged at its
# import). A filter rather than TRANSFORMERS_NO_ADVISORY_WARNINGS or a lower verbosity: every
# other transformers warning still reaches the user, and no environment leaks to subprocesses.
logging.getLogger("transformers").addFilter(_not_torch_advisory)
