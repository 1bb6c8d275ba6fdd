"""Why the paper's learning rates stop learning on the demo's tiny backbone: saturated logits get no gradient from ASL."""

from __future__ import annotations

import torch

from trainables.losses import AsymmetricLoss


def test_saturated_entries_get_no_gradient_under_asl():
    """Why the paper's rates stop learning on the tiny backbone: once a step saturates the
    100 x cosine logits, ASL gives a confidently wrong negative (the probability shift: the log of
    min(1 - p + delta, 1) flattens as p -> 1) and a positive below eps (the log's floor) no gradient."""
    loss_fn = AsymmetricLoss(gamma_neg=2, gamma_pos=1, clip=0.05, eps=1e-6)
    # d = presence - absence logit; p = sigmoid(d).
    d = torch.tensor([30.0, -30.0, 0.0, 0.0], requires_grad=True)
    targets = torch.tensor([0, 1, 0, 1])
    logits = torch.stack([d, torch.zeros_like(d)], dim=-1)
    loss_fn(logits, targets).backward()
    grad = d.grad
    # Written out: negative at p: -p_shift^2 * log(1 - p + delta); its derivative in d at p = sigmoid(30)
    p = torch.sigmoid(torch.tensor(30.0, dtype=torch.float64))
    shifted = p - 0.05
    derivative = 2 * shifted * p * (1 - p) * -torch.log(1 - p + 0.05) + shifted**2 * p * (1 - p) / (1 - p + 0.05)
    assert abs(grad[0].item()) < 1e-10 and derivative < 1e-10  # wrong negative, saturated: nothing learned
    assert abs(grad[1].item()) < 1e-10  # positive with p = sigmoid(-30) < eps: the floor is flat
    assert abs(grad[2].item()) > 0.01 and abs(grad[3].item()) > 0.1  # unsaturated entries do learn
