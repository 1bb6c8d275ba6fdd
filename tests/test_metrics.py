"""Metrics against sklearn, with unknown (-1) entries filtered out in the test itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
)

from trainables.mlr.metrics import (
    average_precision_per_class,
    map_summary,
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


def test_map_is_nan_when_no_class_has_a_positive():
    scores, _ = random_problem(12)
    summary = map_summary(scores, np.zeros(scores.shape, dtype=np.int8))
    assert np.isnan(summary["mAP"]) and summary["classes_without_positives"] == scores.shape[1]


def test_perfect_ranking_scores_100():
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    assert map_summary(targets * 0.5 + 0.25, targets)["mAP"] == pytest.approx(100.0)


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
