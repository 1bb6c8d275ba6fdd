"""OOD metrics and NegLabel's grouped score, against computations written out here."""

from __future__ import annotations

import math
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from trainables.ood.metrics import METRIC_NAMES, ood_metrics, top1_accuracy
from trainables.ood.score import group_permutation, grouped_score, ood_scores


def _auroc_by_pairs(id_scores, ood_scores) -> float:
    """P(ID score > OOD score) + 0.5 P(tie), over every (ID, OOD) pair (Mann-Whitney U / n m)."""
    wins = sum((i > o) + 0.5 * (i == o) for i in id_scores for o in ood_scores)
    return wins / (len(id_scores) * len(ood_scores))


def _trapezoid_aupr(positive_scores, negative_scores) -> float:
    """OpenOOD's AUPR written out: at every distinct score t, from the highest down, precision and
    recall of "score >= t is positive"; then the point (recall 0, precision 1); the area by the
    trapezoid rule over recall."""
    points = [(0.0, 1.0)]
    for threshold in sorted(set(positive_scores) | set(negative_scores), reverse=True):
        hits = sum(s >= threshold for s in positive_scores)
        flagged = hits + sum(s >= threshold for s in negative_scores)
        points.append((hits / len(positive_scores), hits / flagged))
    return sum((r2 - r1) * (p1 + p2) / 2 for (r1, p1), (r2, p2) in zip(points, points[1:]))


def _step_average_precision(positive_scores, negative_scores) -> float:
    """sklearn's `average_precision_score` written out: the sum over distinct thresholds of the
    recall gained times the precision there."""
    total, previous_recall = 0.0, 0.0
    for threshold in sorted(set(positive_scores) | set(negative_scores), reverse=True):
        hits = sum(s >= threshold for s in positive_scores)
        flagged = hits + sum(s >= threshold for s in negative_scores)
        recall = hits / len(positive_scores)
        total += (recall - previous_recall) * hits / flagged
        previous_recall = recall
    return total


def _fpr_at_95_recall(positive_scores, negative_scores) -> float:
    """Keep the top ceil(0.95 n) positives: the threshold is the lowest of them; the FPR is the
    share of negatives at or above it."""
    kept = math.ceil(0.95 * len(positive_scores) - 1e-9)
    threshold = sorted(positive_scores, reverse=True)[kept - 1]
    return float(np.mean(np.asarray(negative_scores) >= threshold))


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    return rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 150)


def test_metrics_match_the_formulas(scores):
    id_scores, ood_scores = scores
    metrics = ood_metrics(id_scores, ood_scores)
    assert list(metrics) == list(METRIC_NAMES)
    assert metrics["auroc"] == pytest.approx(_auroc_by_pairs(id_scores, ood_scores), abs=1e-12)
    assert metrics["aupr_in"] == pytest.approx(_trapezoid_aupr(id_scores, ood_scores), abs=1e-12)
    assert metrics["aupr_out"] == pytest.approx(_trapezoid_aupr(-ood_scores, -id_scores), abs=1e-12)
    assert metrics["fpr95_id_pos"] == pytest.approx(_fpr_at_95_recall(id_scores, ood_scores))
    assert metrics["fpr95_ood_pos"] == pytest.approx(_fpr_at_95_recall(-ood_scores, -id_scores))


def test_aupr_is_openoods_trapezoid_on_tied_scores_not_the_step_sum():
    # Scores rounded to one decimal: many ties within and across the two sets.
    rng = np.random.default_rng(3)
    id_scores, ood_scores = np.round(rng.normal(0.6, 0.5, 120), 1), np.round(rng.normal(0.0, 0.5, 90), 1)
    metrics = ood_metrics(id_scores, ood_scores)
    assert metrics["aupr_in"] == pytest.approx(_trapezoid_aupr(id_scores.tolist(), ood_scores.tolist()), abs=1e-12)
    assert metrics["aupr_out"] == pytest.approx(_trapezoid_aupr((-ood_scores).tolist(), (-id_scores).tolist()), abs=1e-12)
    # The step sum is another quantity on such scores (what the table reported before).
    step_in = _step_average_precision(id_scores.tolist(), ood_scores.tolist())
    assert abs(metrics["aupr_in"] - step_in) > 1e-3
    # A hand-sized case: positives {3, 2, 2}, negatives {2, 1}. Points (r, p): (0, 1), (1/3, 1),
    # (1, 3/4), (1, 3/5); trapezoid: 1/3 * 1 + 2/3 * (1 + 3/4) / 2 + 0 = 0.91667.
    assert ood_metrics(np.array([3.0, 2.0, 2.0]), np.array([2.0, 1.0]))["aupr_in"] == pytest.approx(1 / 3 + 2 / 3 * 1.75 / 2)


def test_the_two_fpr95_conventions_on_hand_made_scores():
    # 20 ID scores 1..20, 20 OOD scores 0.5..19.5 shifted down by 5.
    id_scores = np.arange(1.0, 21.0)
    ood_scores = np.arange(0.5, 20.5) - 5.0
    metrics = ood_metrics(id_scores, ood_scores)
    # ID positive: keep 19 of 20 ID (threshold 2): OOD >= 2 are 2.5..14.5, 13 of 20.
    assert metrics["fpr95_id_pos"] == pytest.approx(13 / 20)
    # OOD positive: flag 19 of 20 OOD (score <= 13.5): ID <= 13.5 are 1..13, 13 of 20.
    assert metrics["fpr95_ood_pos"] == pytest.approx(13 / 20)
    # Asymmetric sets tell the conventions apart: the ID set spread wide, the OOD set narrow.
    wide_id = np.concatenate([np.full(19, 10.0), [-10.0]])
    narrow_ood = np.linspace(-1.0, 1.0, 20)
    metrics = ood_metrics(wide_id, narrow_ood)
    assert metrics["fpr95_id_pos"] == 0.0  # 19 ID at 10 keep 95%, every OOD is below
    assert metrics["fpr95_ood_pos"] == pytest.approx(1 / 20)  # flagging 19 OOD flags the ID at -10


def test_perfect_separation_and_inputs():
    metrics = ood_metrics(np.array([3.0, 4.0]), np.array([1.0, 2.0]))
    assert metrics == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95_id_pos": 0.0, "fpr95_ood_pos": 0.0}
    with pytest.raises(ValueError, match="need ID and OOD samples"):
        ood_metrics(np.array([1.0]), np.array([]))


def test_top1_accuracy():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert top1_accuracy(logits, np.array([1, 0, 0])) == pytest.approx(2 / 3)


# -- NegLabel's grouped score ----------------------------------------------------------------------


def _grouped_score_by_loops(id_cos, negative_cos, groups, scale, seed) -> list[float]:
    """Section 3.3 of NegLabel written out: per image, per group, exp-sum of the ID labels over the
    exp-sum of the ID labels and that group's negatives; averaged over the groups."""
    kept = negative_cos.shape[1] - negative_cos.shape[1] % groups
    permutation = torch.randperm(kept, generator=torch.Generator().manual_seed(seed)).tolist()
    size = kept // groups
    scores = []
    for image in range(id_cos.shape[0]):
        id_mass = sum(math.exp(scale * float(c)) for c in id_cos[image])
        shares = []
        for g in range(groups):
            members = permutation[g * size : (g + 1) * size]
            negative_mass = sum(math.exp(scale * float(negative_cos[image, j])) for j in members)
            shares.append(id_mass / (id_mass + negative_mass))
        scores.append(sum(shares) / groups)
    return scores


@pytest.mark.parametrize("groups", [1, 3, 4])
def test_grouped_score_matches_the_loops(groups):
    generator = torch.Generator().manual_seed(0)
    id_cos = torch.rand(5, 4, generator=generator) * 0.1
    negative_cos = torch.rand(5, 14, generator=generator) * 0.1  # 14 mod 4 = 2 dropped at 4 groups
    expected = _grouped_score_by_loops(id_cos.double(), negative_cos.double(), groups, 100.0, 7)
    got = grouped_score(id_cos.double(), negative_cos.double(), groups=groups, scale=100.0, seed=7)
    assert got.tolist() == pytest.approx(expected, rel=1e-9)


def test_group_permutation_is_seeded_and_drops_the_remainder():
    first, again = group_permutation(10, 3, seed=0), group_permutation(10, 3, seed=0)
    assert first.shape == (3, 3) and torch.equal(first, again)
    assert sorted(first.flatten().tolist()) == list(range(9))
    with pytest.raises(ValueError, match="groups must be between 1"):
        group_permutation(5, 6)


# -- scoring a large test set in batches -----------------------------------------------------------


class LiveBytes(TorchDispatchMode):
    """The most bytes the tensors made under it held at once (on any device, `meta` included); a
    view holds none of its own."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                size = tensor.untyped_storage().nbytes()
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._free, size)
        return out

    def _free(self, size: int) -> None:
        self.live -= size


def _unit(rows: int, dim: int, device: str = "cpu", seed: int = 0) -> torch.Tensor:
    if device == "meta":
        return torch.empty(rows, dim, device="meta")
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize(("rule", "groups"), [("grouped", 1), ("grouped", 7), ("msp", 1)])
def test_scores_in_batches_equal_the_scores_of_one_call(rule, groups):
    images, text, num_id = _unit(530, 32, seed=1), _unit(10 + 70, 32, seed=2), 10
    cosines = images @ text.T
    if rule == "msp":
        whole = torch.softmax(100.0 * cosines[:, :num_id], dim=-1).max(dim=-1).values
    else:
        whole = grouped_score(cosines[:, :num_id], cosines[:, num_id:], groups)
    batched = ood_scores(images, text, num_id, rule=rule, groups=groups, batch_size=64)
    torch.testing.assert_close(batched, whole, rtol=0, atol=1e-6)


def test_scoring_imagenet_scale_takes_one_batchs_memory_not_the_whole_sets():
    """50,000 test images x (1,000 ID + 10,000 negative labels) at 100 groups: one call builds a
    [50,000, 100, 1,100] fp32 tensor (20.5 GiB, and its softmax as much again); in batches of 256
    the peak is a batch's. Measured on the meta device: shapes and sizes, no memory."""
    images, text = _unit(50_000, 512, "meta"), _unit(11_000, 512, "meta")
    one_call = 50_000 * 100 * 1_100 * 4
    tracked = LiveBytes()
    with tracked:
        scores = ood_scores(images, text, 1_000, rule="grouped", groups=100, batch_size=256)
    assert scores.shape == (50_000,)
    batch = 256 * 100 * 1_100 * 4  # one batch's [256, 100, 1,100] fp32 tensor: 113 MB
    assert batch < tracked.peak <= 5 * batch  # the batch, its softmax and a few of its neighbours
    assert one_call / tracked.peak > 35
