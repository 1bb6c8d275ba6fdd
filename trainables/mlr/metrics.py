"""Multi-label evaluation with partial labels: per-class AP and mAP.

Targets are in {1, 0, -1}; entries with -1 (unknown) are ignored by every metric here.

Differences from the reference evaluation (REFERENCE.md section 1, Evaluation, copied from ASL):
the reference breaks score ties by `argsort` order and averages over all classes, a class with no
positive counting as AP 0. Here tied scores form one threshold, as sklearn's
`average_precision_score`, and classes without a known positive are left out of the mean (and
counted), since their AP is undefined.
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def average_precision_per_class(scores: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """Non-interpolated AP of each class [K], in [0, 1]; NaN for classes without a known positive.

    AP = sum over distinct score thresholds t (descending) of (recall(t) - recall(t_prev)) ·
    precision(t), where a threshold admits every entry scoring at least t: equal scores are one
    step, as sklearn's `average_precision_score`. Equivalently, the mean over positives of the
    precision at the end of their tie group.

    Computed with torch on the device the scores are on (a trial's GPU ranks its test split there).
    """
    scores, targets = _checked(scores, targets)
    order = torch.argsort(-scores, dim=0, stable=True)
    sorted_scores = scores.gather(0, order)
    sorted_targets = targets.gather(0, order)
    is_positive = sorted_targets == 1

    true_positives = is_positive.cumsum(dim=0)
    known = (sorted_targets != -1).cumsum(dim=0)

    # Index of the last row of each row's tie group: the next group end at or below it.
    n = scores.shape[0]
    group_end = torch.ones_like(sorted_scores, dtype=torch.bool)
    group_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    rows = torch.arange(n, device=scores.device)[:, None]
    end_index = torch.where(group_end, rows, n)
    end_of_group = end_index.flip(0).cummin(dim=0).values.flip(0)

    tp_at_end = true_positives.gather(0, end_of_group)
    known_at_end = known.gather(0, end_of_group)
    # A positive row is known, so known_at_end >= 1 wherever the precision is used.
    precision = torch.where(is_positive, tp_at_end.double() / known_at_end.clamp(min=1).double(), 0.0)

    positives = is_positive.sum(dim=0)
    average = torch.where(positives > 0, precision.sum(dim=0) / positives.clamp(min=1), torch.nan)
    return average.cpu().numpy()


def map_summary(scores: ArrayLike, targets: ArrayLike) -> dict:
    """`mAP` (percent, mean over classes with a known positive; NaN if none has one),
    `per_class_ap` (array [K] in [0, 1], NaN where undefined) and `classes_without_positives`."""
    per_class = average_precision_per_class(scores, targets)
    defined = ~np.isnan(per_class)
    mean = float(per_class[defined].mean() * 100.0) if defined.any() else float("nan")
    return {"mAP": mean, "per_class_ap": per_class, "classes_without_positives": int((~defined).sum())}


def _checked(scores: ArrayLike, targets: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores as float64 and targets as int8 tensors [N, K] on the scores' device, validated."""
    scores = torch.as_tensor(scores).detach()
    targets = torch.as_tensor(targets).to(scores.device)
    scores = scores.to(torch.float64)  # every float32 and bfloat16 value exactly, so ties are kept
    if scores.dim() != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"expected scores and targets of the same shape [N, K], got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    if not torch.isin(targets, torch.tensor([1, 0, -1], device=targets.device)).all():
        raise ValueError("targets must be 1 (positive), 0 (negative) or -1 (unknown)")
    nan_count = int(torch.isnan(scores).sum())
    if nan_count:
        raise ValueError(f"{nan_count} scores are NaN (a diverged model?); they cannot be ranked")
    return scores, targets.to(torch.int8)
