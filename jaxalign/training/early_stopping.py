"""Early stopping on the top-k entropy, the over-optimisation signal of direct alignment.

Shi et al., "Understanding Likelihood Over-optimisation in Direct Alignment Algorithms"
(arXiv 2410.11677, §4.4-§5) find that the entropy over the top-k next-token probabilities of
DPO/IPO-trained models rises, then turns down, and that its turning point coincides with that
of the win probability; they suggest (without implementing it) stopping once the entropy turns
or falls below a threshold. :class:`EntropyStop` is that rule over the evaluations of a run.
"""

from __future__ import annotations

import dataclasses

from jaxalign.config.run import EvalConfig


@dataclasses.dataclass
class EntropyStop:
    """Stops after ``patience`` consecutive evaluations at which the entropy fell (each lower
    than the one before), or at one below ``below`` bits; either rule may be ``None``.

    The count lives in the running process: a resumed run starts counting again.
    """

    patience: int | None = None
    below: float | None = None
    falls: int = 0
    previous: float | None = None

    @classmethod
    def from_config(cls, cfg: EvalConfig) -> EntropyStop | None:
        """The rule ``cfg`` sets (``eval.stop_patience``, ``eval.stop_entropy_below``), or ``None``."""
        return cls(cfg.stop_patience, cfg.stop_entropy_below) if cfg.stops_early else None

    def start(self, entropy: float) -> None:
        """The initial model's entropy (step 0): the first fall is measured from it; no rule
        applies to it."""
        self.previous = entropy

    def update(self, entropy: float) -> str | None:
        """Takes one evaluation's entropy; returns why to stop now, or ``None`` to go on."""
        self.falls = self.falls + 1 if self.previous is not None and entropy < self.previous else 0
        self.previous = entropy
        if self.below is not None and entropy < self.below:
            return f"top-k entropy {entropy:.4f} < eval.stop_entropy_below={self.below:g}"
        if self.patience is not None and self.falls >= self.patience:
            return f"top-k entropy fell at {self.falls} consecutive evaluations (eval.stop_patience={self.patience})"
        return None
