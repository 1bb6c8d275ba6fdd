"""AsymmetricLoss against independent computations: an explicit loop over equation 1, a
transcription of the reference code (REFERENCE.md sections 1 and 3), cross-entropy, torchvision's
focal loss and finite-difference gradients."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from trainables.data import MultiLabelDataset
from trainables.errors import UserInputError
from trainables.mlr.config import LossConfig
from trainables.mlr.losses import AsymmetricLoss


def random_batch(seed: int, batch: int = 4, classes: int = 5, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 logits [B, K, 2] and targets with every one of 1, 0, -1 present."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, 2, generator=generator, dtype=torch.float64) * scale
    targets = torch.randint(-1, 2, (batch, classes), generator=generator)
    targets.view(-1)[:3] = torch.tensor([1, 0, -1])
    return logits, targets


def equation_1_loop(
    logits, targets, gamma_neg, gamma_pos, clip, eps, reduction="sum", activation="softmax"
) -> float:
    """PositiveCoOp equation 1, one entry at a time, in Python floats."""
    total, known = 0.0, 0
    for (presence, absence), y in zip(logits.reshape(-1, 2).tolist(), targets.reshape(-1).tolist()):
        if y == -1:
            continue
        known += 1
        difference = presence - absence if activation == "softmax" else presence
        p = 1.0 / (1.0 + math.exp(-difference))
        if y == 1:
            total -= (1.0 - p) ** gamma_pos * math.log(max(p, eps))
        else:
            p_shifted = max(p - clip, 0.0)
            total -= p_shifted**gamma_neg * math.log(max(1.0 - p_shifted, eps))
    return total / max(known, 1) if reduction == "mean" else total


def reference_asl(logits, targets, gamma_neg, gamma_pos, clip, eps, disable_torch_grad_focal_loss, activation="softmax"):
    """The reference `AsymmetricLoss.forward` (REFERENCE.md section 1; section 3 for the sigmoid),
    on the reference's logit order [absence, presence]."""
    x = logits.flip(-1).reshape(-1, 2)
    y = targets.reshape(-1)
    keep = y != -1
    x, y = x[keep], y[keep].to(x.dtype)
    if activation == "softmax":
        sm = torch.softmax(x, dim=1)
        xs_pos, xs_neg = sm[:, 1], sm[:, 0]
    else:
        xs_pos = torch.sigmoid(x[:, 1])
        xs_neg = 1 - xs_pos
    if clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    los_pos = y * torch.log(xs_pos.clamp(min=eps))
    los_neg = (1 - y) * torch.log(xs_neg.clamp(min=eps))
    loss = los_pos + los_neg
    with torch.set_grad_enabled(not disable_torch_grad_focal_loss):
        pt = xs_pos * y + xs_neg * (1 - y)
        one_sided_gamma = gamma_pos * y + gamma_neg * (1 - y)
        one_sided_w = torch.pow(1 - pt, one_sided_gamma)
    return -(loss * one_sided_w).sum()


SETTINGS = [
    dict(gamma_neg=2.0, gamma_pos=1.0, clip=0.05, eps=1e-6),
    dict(gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8),
    dict(gamma_neg=1.5, gamma_pos=0.5, clip=0.2, eps=1e-6),
    dict(gamma_neg=2.0, gamma_pos=1.0, clip=0.0, eps=1e-6),
    dict(gamma_neg=20.0, gamma_pos=12.0, clip=0.05, eps=1e-6),
]


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("settings", SETTINGS)
def test_value_matches_equation_1(settings, reduction, activation):
    logits, targets = random_batch(seed=1)
    loss = AsymmetricLoss(**settings, reduction=reduction, activation=activation)(logits, targets)
    expected = equation_1_loop(logits, targets, **settings, reduction=reduction, activation=activation)
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("settings", SETTINGS[:4])
def test_value_and_gradient_match_reference_code(settings, detach, activation):
    logits, targets = random_batch(seed=2, batch=6, classes=7)
    ours = logits.clone().requires_grad_()
    reference = logits.clone().requires_grad_()
    loss = AsymmetricLoss(**settings, detach_focal_weight=detach, activation=activation)(ours, targets)
    expected = reference_asl(
        reference, targets, **settings, disable_torch_grad_focal_loss=detach, activation=activation
    )
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.grad, reference.grad, rtol=1e-8, atol=1e-12)


def test_focal_weight_detach_keeps_value_changes_gradient():
    logits, targets = random_batch(seed=3)
    paper, detached = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    value_paper = AsymmetricLoss(detach_focal_weight=False)(paper, targets)
    value_detached = AsymmetricLoss(detach_focal_weight=True)(detached, targets)
    value_paper.backward()
    value_detached.backward()
    assert value_paper.item() == pytest.approx(value_detached.item(), rel=1e-12)
    assert (paper.grad - detached.grad).abs().max() > 1e-3


def test_paper_gradient_matches_finite_differences():
    logits, targets = random_batch(seed=4, batch=3, classes=4, scale=2.0)
    loss = AsymmetricLoss(gamma_neg=2.0, gamma_pos=1.0, clip=0.05)
    assert torch.autograd.gradcheck(lambda x: loss(x, targets), (logits.requires_grad_(),))


def test_fractional_gamma_below_the_shift_has_zero_weight_gradient():
    # Negatives with p < clip: p_shifted = 0, where d(x^0.5)/dx is infinite; the loss is 0 around them.
    logits = torch.tensor([[[-6.0, 0.0], [-5.0, 0.0], [2.0, 0.0], [1.0, 0.0]]], dtype=torch.float64)
    targets = torch.tensor([[0, 0, 0, 1]])
    loss = AsymmetricLoss(gamma_neg=0.5, gamma_pos=0.5, clip=0.05)
    x = logits.clone().requires_grad_()
    loss(x, targets).backward()
    assert torch.isfinite(x.grad).all()
    assert torch.all(x.grad[0, :2] == 0)
    assert torch.autograd.gradcheck(lambda z: loss(z, targets), (logits.requires_grad_(),))


def test_without_focusing_or_shift_is_cross_entropy_of_the_two_way_softmax():
    logits, targets = random_batch(seed=5)
    known = targets != -1
    # Class 0 of the 2-way softmax is presence.
    classes = torch.where(targets[known] == 1, 0, 1)
    expected = F.cross_entropy(logits[known], classes, reduction="sum")
    loss = AsymmetricLoss(gamma_neg=0.0, gamma_pos=0.0, clip=0.0)(logits, targets)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=0)
    mean = AsymmetricLoss(gamma_neg=0.0, gamma_pos=0.0, clip=0.0, reduction="mean")(logits, targets)
    torch.testing.assert_close(mean, F.cross_entropy(logits[known], classes), rtol=1e-10, atol=0)


@pytest.mark.parametrize("gamma", [1.0, 2.0, 3.5])
def test_without_shift_is_focal_loss_on_the_logit_difference(gamma):
    logits, targets = random_batch(seed=6)
    known = targets != -1
    # softmax(a, b)[0] = sigmoid(a - b): torchvision's focal loss with alpha disabled.
    expected = sigmoid_focal_loss(
        (logits[..., 0] - logits[..., 1])[known], targets[known].to(logits.dtype), alpha=-1, gamma=gamma, reduction="sum"
    )
    loss = AsymmetricLoss(gamma_neg=gamma, gamma_pos=gamma, clip=0.0)(logits, targets)
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=0)


def test_unknown_labels_contribute_nothing():
    logits, targets = random_batch(seed=7)
    unknown = targets == -1
    loss = AsymmetricLoss()
    x = logits.clone().requires_grad_()
    value = loss(x, targets)
    value.backward()
    assert torch.all(x.grad[unknown] == 0)
    # Known positives always pull (a negative below the clip shift legitimately does not).
    assert torch.all(x.grad[targets == 1].abs().sum(-1) > 0)

    changed = logits.clone()
    changed[unknown] = torch.randn_like(changed[unknown]) * 100
    assert loss(changed, targets).item() == value.item()

    # Only the known entries, as a flat batch of one image.
    known_only = loss(logits[~unknown][None], targets[~unknown][None])
    assert known_only.item() == pytest.approx(value.item(), rel=1e-12)


def test_mean_is_sum_over_known_entries_and_zero_without_any():
    logits, targets = random_batch(seed=8)
    total = AsymmetricLoss(reduction="sum")(logits, targets)
    mean = AsymmetricLoss(reduction="mean")(logits, targets)
    assert mean.item() == pytest.approx(total.item() / int((targets != -1).sum()), rel=1e-12)

    x = logits.clone().requires_grad_()
    nothing_known = AsymmetricLoss(reduction="mean")(x, torch.full_like(targets, -1))
    nothing_known.backward()
    assert nothing_known.item() == 0.0
    assert torch.all(x.grad == 0)


def test_sigmoid_ignores_the_absence_logit():
    logits, targets = random_batch(seed=9)
    x = logits.clone().requires_grad_()
    loss = AsymmetricLoss(activation="sigmoid")
    value = loss(x, targets)
    value.backward()
    assert torch.all(x.grad[..., 1] == 0)
    shifted = logits.clone()
    shifted[..., 1] += 5.0
    assert loss(shifted, targets).item() == value.item()


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("gammas", [(2.0, 1.0), (0.5, 0.5), (0.0, 0.0)])
def test_extreme_logits_are_finite(activation, detach, gammas):
    gamma_neg, gamma_pos = gammas
    # Every combination of confidently right / wrong, present / absent, in float32.
    logits = torch.tensor([[[1e4, -1e4], [-1e4, 1e4], [1e4, -1e4], [-1e4, 1e4], [1e4, 1e4], [-1e4, -1e4]]])
    targets = torch.tensor([[1, 1, 0, 0, 1, 0]])
    x = logits.clone().requires_grad_()
    settings = dict(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=0.05, eps=1e-6)
    value = AsymmetricLoss(**settings, activation=activation, detach_focal_weight=detach)(x, targets)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()
    expected = reference_asl(
        logits, targets, **settings, disable_torch_grad_focal_loss=True, activation=activation
    )
    torch.testing.assert_close(value, expected.to(value.dtype), rtol=1e-5, atol=1e-5)


def test_constructor_takes_exactly_the_loss_config_fields_but_weight():
    parameters = set(inspect.signature(AsymmetricLoss.__init__).parameters) - {"self"}
    assert parameters == set(LossConfig.model_fields) - {"weight"}
    config = LossConfig(gamma_neg=3.0, gamma_pos=0.0, clip=0.1, reduction="mean", activation="sigmoid", weight=0.03)
    loss = AsymmetricLoss.from_config(config)
    logits, targets = random_batch(seed=10)
    expected = equation_1_loop(logits, targets, 3.0, 0.0, 0.1, 1e-6, reduction="mean", activation="sigmoid")
    assert loss(logits, targets).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "bad", [dict(gamma_neg=-1.0), dict(gamma_pos=-0.5), dict(clip=1.0), dict(clip=-0.1), dict(eps=0.0),
            dict(reduction="none"), dict(activation="tanh")]
)
def test_bad_settings_are_user_errors(bad):
    with pytest.raises(UserInputError):
        AsymmetricLoss(**bad)


def test_mismatched_shapes_are_rejected():
    loss = AsymmetricLoss()
    with pytest.raises(ValueError, match="shape"):
        loss(torch.zeros(2, 3, 2), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="shape"):
        loss(torch.zeros(2, 3, 3), torch.zeros(2, 3))


def test_bad_label_values_are_refused_once_when_a_split_is_loaded():
    """The loss does not check target values (that would wait for the device every step): a dataset
    whose labels hold anything but 1, 0 and -1 is a one-line error naming it, when it is built."""
    labels = np.array([[1, 0], [2, -1]], dtype=np.int8)
    with pytest.raises(UserInputError, match=r"dataset 'odd' \(train\): labels must be 1 \(present\), 0 \(absent\) or -1 \(unknown\), found \[2\]"):
        MultiLabelDataset("odd", "manifest", "train", ["a", "b"], ["x", "y"], [Path("x"), Path("y")], labels)
