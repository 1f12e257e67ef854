"""What selection costs against the fine-tune it is meant to save: the selection-to-tuning ratio (STR).

STR = scoring cost / cost of fine-tuning on the whole pool. Measured when both ran (wall seconds of every current
one_shot_scores partition over the wall seconds of the `full` variant's fine-tune). Otherwise estimated from
FLOPs with the usual transformer arithmetic, forward ~2 N FLOPs per token and training (forward + backward)
~6 N per token:

    STR_est = 2 N_score x (anchor + prefix tokens scored) / (6 N_train x pool tokens x epochs)

per epoch of fine-tuning unless ``epochs`` is given, and with N_score = N_train unless both are given (scoring
with a small model for a large one divides the ratio by their size ratio). Above 1, selection costs more than
the fine-tune on everything it was meant to avoid.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SelectionCost:
    ratio: float
    basis: str  # "measured" or "estimated"
    note: str

    def line(self) -> str:
        verdict = (
            "selection costs more than fine-tuning on the whole pool" if self.ratio > 1 else "selection is cheaper"
        )
        return f"selection-to-tuning ratio {self.ratio:.2f} ({self.basis}: {self.note}); {verdict}"


def measured(scoring_seconds: float, full_tuning_seconds: float) -> SelectionCost:
    if scoring_seconds <= 0 or full_tuning_seconds <= 0:
        raise ValueError("both wall times must be positive")
    return SelectionCost(
        scoring_seconds / full_tuning_seconds,
        "measured",
        f"scoring {scoring_seconds:,.0f} s over the full-pool fine-tune's {full_tuning_seconds:,.0f} s",
    )


def estimated(
    scored_tokens: int,
    pool_tokens: int,
    epochs: float | None = None,
    scoring_parameters: int | None = None,
    tuning_parameters: int | None = None,
) -> SelectionCost:
    """The FLOP estimate: forward passes of scoring over training passes of a fine-tune on the whole pool."""
    if pool_tokens <= 0:
        raise ValueError("the pool holds no token to train on")
    size = scoring_parameters / tuning_parameters if scoring_parameters and tuning_parameters else 1.0
    ratio = 2 * scored_tokens * size / (6 * pool_tokens * (epochs or 1.0))
    per = f"{epochs:g} epochs" if epochs else "one epoch"
    models = f", scoring model {size:.3g}x the trained one's size" if size != 1.0 else ", the same model"
    return SelectionCost(
        ratio, "estimated", f"forward FLOPs of {scored_tokens:,} scored tokens over {per} on {pool_tokens:,}{models}"
    )


__all__ = ["SelectionCost", "estimated", "measured"]
