"""Metrics against sklearn, with unknown (-1) entries filtered out in the test itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_fscore_support,
)

from trainables.mlr.metrics import (
    average_precision_per_class,
    map_summary,
    mean_average_precision,
    overall_and_per_class_f1,
)


def random_problem(seed: int, n: int = 60, k: int = 6, unknown: float = 0.3, decimals: int = 1):
    """Scores rounded to `decimals` (many ties) and targets in {1, 0, -1}."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, k)) < 0.35).astype(np.int8)
    targets[rng.random((n, k)) < unknown] = -1
    scores = np.round(rng.random((n, k)) * 0.6 + 0.4 * (targets == 1), decimals)
    return scores, targets


def sklearn_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class AP over the known entries, NaN where a class has no known positive."""
    result = []
    for column in range(scores.shape[1]):
        known = targets[:, column] != -1
        y = targets[known, column]
        result.append(average_precision_score(y, scores[known, column]) if (y == 1).any() else np.nan)
    return np.array(result)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [1, 2, 8])
def test_per_class_ap_matches_sklearn_with_ties_and_unknowns(seed, decimals):
    scores, targets = random_problem(seed, decimals=decimals)
    np.testing.assert_allclose(average_precision_per_class(scores, targets), sklearn_ap(scores, targets), rtol=1e-12)


def test_ties_count_as_one_threshold():
    # Groups {0.9}: precision 1/1; {0.8, 0.8}: 2/3; {0.1}: 3/4; each adds a third of the recall.
    scores = np.array([[0.9], [0.8], [0.8], [0.1]])
    targets = np.array([[1], [0], [1], [1]])
    expected = (1.0 + 2.0 / 3.0 + 3.0 / 4.0) / 3.0
    assert average_precision_per_class(scores, targets)[0] == pytest.approx(expected, rel=1e-12)
    # Tie order in the input must not matter.
    swapped = [0, 2, 1, 3]
    assert average_precision_per_class(scores[swapped], targets[swapped])[0] == pytest.approx(expected, rel=1e-12)


def test_map_is_percent_mean_over_classes_with_positives():
    scores, targets = random_problem(11, k=8)
    targets[:, 2] = np.where(targets[:, 2] == 1, 0, targets[:, 2])  # no positive at all
    targets[:, 5] = np.where(targets[:, 5] == 1, -1, targets[:, 5])  # positives only among unknowns
    targets[:, 6] = 1  # every entry positive
    summary = map_summary(scores, targets)
    expected = sklearn_ap(scores, targets)
    assert np.isnan(expected[[2, 5]]).all()
    assert expected[6] == pytest.approx(1.0)
    assert summary["classes_without_positives"] == 2
    np.testing.assert_allclose(summary["per_class_ap"], expected, rtol=1e-12)
    assert summary["mAP"] == pytest.approx(100.0 * np.nanmean(expected), rel=1e-12)
    assert mean_average_precision(scores, targets) == summary["mAP"]


def test_map_is_nan_when_no_class_has_a_positive():
    scores, _ = random_problem(12)
    summary = map_summary(scores, np.zeros(scores.shape, dtype=np.int8))
    assert np.isnan(summary["mAP"]) and summary["classes_without_positives"] == scores.shape[1]


def test_perfect_ranking_scores_100():
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    assert mean_average_precision(targets * 0.5 + 0.25, targets) == pytest.approx(100.0)


def test_torch_inputs_match_numpy():
    scores, targets = random_problem(13)
    expected = map_summary(scores.astype(np.float32), targets)
    from_torch = map_summary(torch.from_numpy(scores.astype(np.float32)), torch.from_numpy(targets))
    np.testing.assert_array_equal(from_torch["per_class_ap"], expected["per_class_ap"])
    bf16_scores = torch.from_numpy(scores).to(torch.bfloat16)
    np.testing.assert_allclose(
        average_precision_per_class(bf16_scores, torch.from_numpy(targets).float()),
        sklearn_ap(bf16_scores.float().numpy(), targets),
        rtol=1e-12,
    )


def test_bad_inputs_are_rejected():
    scores, targets = random_problem(14)
    with pytest.raises(ValueError, match="shape"):
        map_summary(scores[:, :3], targets)
    with pytest.raises(ValueError, match="targets"):
        map_summary(scores, targets * 2)
    scores[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        map_summary(scores, targets)


def test_f1_without_unknowns_matches_sklearn_macro_and_micro():
    scores, targets = random_problem(15, n=80, unknown=0.0, decimals=3)
    predicted = (scores > 0.5).astype(int)
    cp, cr, _, _ = precision_recall_fscore_support(targets, predicted, average="macro", zero_division=0)
    op, o_r, of1, _ = precision_recall_fscore_support(targets, predicted, average="micro", zero_division=0)
    result = overall_and_per_class_f1(scores, targets, threshold=0.5)
    assert result["CP"] == pytest.approx(100 * cp)
    assert result["CR"] == pytest.approx(100 * cr)
    assert result["CF1"] == pytest.approx(100 * 2 * cp * cr / (cp + cr))
    assert result["CF1_mean"] == pytest.approx(100 * f1_score(targets, predicted, average="macro", zero_division=0))
    assert result["OP"] == pytest.approx(100 * op)
    assert result["OR"] == pytest.approx(100 * o_r)
    assert result["OF1"] == pytest.approx(100 * of1)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_f1_ignores_unknown_entries(threshold):
    scores, targets = random_problem(16, n=80, decimals=3)
    per_class = []
    true_flat, predicted_flat = [], []
    for column in range(scores.shape[1]):
        known = targets[:, column] != -1
        y, predicted = targets[known, column], (scores[known, column] > threshold).astype(int)
        per_class.append(precision_recall_fscore_support(y, predicted, average="binary", zero_division=0)[:3])
        true_flat.append(y)
        predicted_flat.append(predicted)
    cp, cr, cf1_mean = 100 * np.mean(per_class, axis=0)
    op, o_r, of1, _ = precision_recall_fscore_support(
        np.concatenate(true_flat), np.concatenate(predicted_flat), average="binary", zero_division=0
    )
    result = overall_and_per_class_f1(scores, targets, threshold=threshold)
    expected = {"CP": cp, "CR": cr, "CF1": 2 * cp * cr / (cp + cr), "CF1_mean": cf1_mean,
                "OP": 100 * op, "OR": 100 * o_r, "OF1": 100 * of1}
    assert result == pytest.approx(expected)


def test_f1_threshold_is_strict_and_empty_predictions_score_zero():
    targets = np.array([[1, 0], [0, 1]])
    at_threshold = overall_and_per_class_f1(np.full((2, 2), 0.5), targets, threshold=0.5)
    assert at_threshold == {"CP": 0.0, "CR": 0.0, "CF1": 0.0, "CF1_mean": 0.0, "OP": 0.0, "OR": 0.0, "OF1": 0.0}
