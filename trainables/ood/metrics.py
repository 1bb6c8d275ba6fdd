"""OOD detection metrics, computed with sklearn as OpenOOD's evaluator does (`compute_all_metrics`
in `openood/evaluators/metrics.py`, which LAPT's released code reports): AUROC, AUPR-in, AUPR-out
and FPR at 95% TPR.

Scores are ID-ness: higher means more in-distribution (NegLabel's and LAPT's score).

- `auroc`: the area under the ROC curve, the same with either class positive.
- `aupr_in` and `aupr_out`: OpenOOD's, the trapezoid rule over sklearn's precision-recall curve
  (`auc(recall, precision)`, every distinct threshold plus the point recall 0, precision 1), with
  ID positive on the score (in) and OOD positive on its negation (out). This is not sklearn's
  `average_precision_score`, a step sum, which differs from it by up to a few points on tied scores.

The two published FPR95 conventions differ in which side the 95% recall is taken on, so each
carries its convention in its name:

- `fpr95_id_pos` (NegLabel, `mmcls/utils/ood_evaluate.py`): ID is the positive class; the fraction
  of OOD samples scored at or above the threshold that keeps 95% of the ID samples.
- `fpr95_ood_pos` (OpenOOD, `openood/evaluators/metrics.py`, LAPT's tables): OOD is the positive
  class (scored by -score); the fraction of ID samples flagged as OOD at the threshold that flags
  95% of the OOD samples.

AUROC is the same under both (ID positive on the score = OOD positive on its negation). All values
are fractions in [0, 1]; tables print them as percentages.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score, roc_curve

RECALL = 0.95


def fpr_at_recall(positive_scores: np.ndarray, negative_scores: np.ndarray, recall: float = RECALL) -> float:
    """False-positive rate at the first ROC point whose true-positive rate reaches `recall`."""
    labels = np.concatenate([np.ones(len(positive_scores)), np.zeros(len(negative_scores))])
    fpr, tpr, _ = roc_curve(labels, np.concatenate([positive_scores, negative_scores]))
    return float(fpr[np.argmax(tpr >= recall)])


def aupr(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """OpenOOD's AUPR: the trapezoid area under the precision-recall curve of the positive class."""
    labels = np.concatenate([np.ones(len(positive_scores)), np.zeros(len(negative_scores))])
    precision, recall, _ = precision_recall_curve(labels, np.concatenate([positive_scores, negative_scores]))
    return float(auc(recall, precision))


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR-in, AUPR-out, FPR95 both ways, for ID-ness scores of an ID and an OOD set."""
    id_scores, ood_scores = np.asarray(id_scores, dtype=np.float64), np.asarray(ood_scores, dtype=np.float64)
    if len(id_scores) == 0 or len(ood_scores) == 0:
        raise ValueError(f"OOD metrics need ID and OOD samples, got {len(id_scores)} and {len(ood_scores)}")
    is_id = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))])
    scores = np.concatenate([id_scores, ood_scores])
    return {
        "auroc": float(roc_auc_score(is_id, scores)),
        "aupr_in": aupr(id_scores, ood_scores),
        "aupr_out": aupr(-ood_scores, -id_scores),
        "fpr95_id_pos": fpr_at_recall(id_scores, ood_scores),
        "fpr95_ood_pos": fpr_at_recall(-ood_scores, -id_scores),
    }


METRIC_NAMES = ("auroc", "aupr_in", "aupr_out", "fpr95_id_pos", "fpr95_ood_pos")
"""The keys of `ood_metrics`, in table order."""


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose highest logit is their label."""
    return float(np.mean(np.asarray(logits).argmax(axis=1) == np.asarray(labels)))
