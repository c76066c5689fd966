"""Choosing which SFT or preference examples to train on: Deita's complexity and quality scores
and its score-first diversity filter (:mod:`.deita`, :mod:`.diversity`), the entropy-based
sampling of Khera et al. as a labelled reconstruction (:mod:`.entropy`), and the pipeline behind
``jaxalign select`` (:mod:`.select`)."""

from jaxalign.selection.deita import COMPLEXITY_PROMPT, QUALITY_PROMPT, DeitaScorer, expected_score
from jaxalign.selection.diversity import repr_filter
from jaxalign.selection.entropy import entropy_change

__all__ = ["COMPLEXITY_PROMPT", "QUALITY_PROMPT", "DeitaScorer", "entropy_change", "expected_score", "repr_filter"]
