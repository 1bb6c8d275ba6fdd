"""The negation testbed's parts: captions that name absent classes at a chosen rate, the
section 5.2 measurement, and the paired comparison across seeds (against scipy)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from scipy import stats

from orchestrator.paired import paired_difference
from trainables import negation, pretrain
from trainables.data import synthetic

NAMES = synthetic.classnames(8)
ABSENCE = re.compile(r"(, no |and no |but no |, without an? )(\w+)")
"""The connector of each of `pretrain.ABSENCE_PHRASINGS`, then the absent class."""


def random_presence(count: int, seed: int = 0) -> np.ndarray:
    """Label sets of 1 to 4 classes out of 8, as the generated images have."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((count, len(NAMES)), dtype=bool)
    for row in labels:
        row[rng.choice(len(NAMES), size=rng.integers(1, 5), replace=False)] = True
    return labels


@pytest.mark.parametrize("rate", [0.005, 0.05, 0.25, 1.0])
def test_captions_name_an_absent_class_at_the_rate_asked(rate):
    labels = random_presence(8000)
    rng = np.random.default_rng(1)
    captions = [pretrain.caption(NAMES, present, rng, rate) for present in labels]
    negated = [(ABSENCE.search(text), present) for text, present in zip(captions, labels, strict=True)]
    count = sum(match is not None for match, _ in negated)
    # Within 4 standard deviations of the binomial count (every label set here has an absent class).
    assert abs(count - rate * len(labels)) <= 4 * np.sqrt(len(labels) * rate * (1 - rate)) + 1e-9
    for match, present in negated:
        if match is not None:  # the class a caption says is absent is absent, and it is one of the classes
            assert not present[NAMES.index(match[2])]
    if rate >= 0.25:  # every phrasing is used
        assert len({match[1].removesuffix("a ").removesuffix("an ") for match, _ in negated if match}) == len(pretrain.ABSENCE_PHRASINGS)


def test_rate_zero_is_the_plain_recipe_draw_for_draw():
    labels = random_presence(500)
    plain, zero = np.random.default_rng(3), np.random.default_rng(3)
    assert [pretrain.caption(NAMES, p, plain) for p in labels] == [pretrain.caption(NAMES, p, zero, 0.0) for p in labels]
    assert "negation_rate" not in pretrain._recipe("RN-tiny", 128, 0, 200, 64, 8, 0.0)  # checkpoint names kept
    assert pretrain._recipe("RN-tiny", 128, 0, 200, 64, 8, 0.25)["negation_rate"] == 0.25


def test_absence_cosines_match_open_clips_own_text_encoder(tiny_rn):
    names = ["circle", "traffic_light"]
    tokenizer = __import__("open_clip").get_tokenizer("RN-tiny")

    def features(texts):
        with torch.no_grad():
            return tiny_rn.model.encode_text(tokenizer(texts), normalize=True)

    present = features([f"a photo of a {n.replace('_', ' ')}." for n in names])
    expected = {
        "not_a_photo": (present * features([f"not a photo of a {n.replace('_', ' ')}." for n in names])).sum(-1).mean(),
        "photo_without": (present * features([f"a photo without a {n.replace('_', ' ')}." for n in names])).sum(-1).mean(),
    }
    measured = negation.absence_cosines(tiny_rn, names)
    assert measured.keys() == expected.keys()
    for key in expected:
        assert measured[key] == pytest.approx(float(expected[key]), abs=1e-5)


def test_paired_difference_matches_scipy_on_fixed_numbers():
    a = np.array([61.2, 58.9, 63.4, 60.1, 59.7])
    b = np.array([57.0, 58.1, 60.2, 55.9, 58.8])
    result = paired_difference(a, b)
    reference = stats.ttest_rel(a, b)
    interval = reference.confidence_interval(0.95)
    assert result.mean == pytest.approx(np.mean(a - b))
    assert result.t == pytest.approx(reference.statistic)
    assert result.p_value == pytest.approx(reference.pvalue)
    assert (result.low, result.high) == (pytest.approx(interval.low), pytest.approx(interval.high))
    assert result.n == 5
    one = paired_difference(a[:1], b[:1])
    assert one.mean == pytest.approx(4.2) and np.isnan(one.low) and np.isnan(one.p_value)
    with pytest.raises(ValueError):
        paired_difference(a, b[:3])
