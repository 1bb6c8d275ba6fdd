"""The asymmetric loss (ASL) on (presence, absence) logits, with partial labels.

PositiveCoOp (section 3.3, equation 1) trains every setup with ASL on a 2-way softmax: with
p = softmax(presence, absence)[presence] and the shifted probability p_δ = max(p - δ, 0),

    known positive (y = 1):  (1 - p)^γ+ · log(p)
    known negative (y = 0):  p_δ^γ- · log(1 - p_δ)
    unknown (y = -1):        nothing

and the loss is minus the sum over the known entries. REFERENCE.md sections 1 and 3 describe the
reference code (DualCoOp's copy of ASL's `AsymmetricLoss`), which this module matches: the log
arguments are clamped to at least `eps`, and 1 - p_δ is computed as min(absence + δ, 1).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from trainables.errors import UserInputError
from trainables.mlr.config import LossConfig


class AsymmetricLoss(nn.Module):
    """ASL over logits [B, K, 2] ([..., 0] presence, [..., 1] absence) and targets [B, K] in {1, 0, -1}.

    Arguments are exactly `LossConfig`'s fields except `weight`, which the training loop applies:

    - `gamma_pos`, `gamma_neg`: focusing exponents γ+ and γ- of equation 1.
    - `clip`: the probability shift δ applied to negatives (0 disables it).
    - `eps`: lower bound of the log arguments, log(max(·, eps)), as the reference.
    - `reduction`: `sum` (the paper's L_total and the reference) or `mean` over the known entries
      (0 when a batch has none).
    - `activation`: `softmax` over the two logits (the paper, REFERENCE.md section 1), or `sigmoid`
      of the presence logit alone, the absence logit unused (the standard ASL of Ridnik et al.,
      REFERENCE.md section 3).
    - `detach_focal_weight`: False differentiates equation 1 as written, through the focal weight;
      True treats the weight as a constant, as the reference's `disable_torch_grad_focal_loss=True`
      (REFERENCE.md sections 1 and 3). The loss value is the same either way.

    Entries with target -1 contribute neither value nor gradient.
    """

    def __init__(
        self,
        gamma_neg: float = 2.0,
        gamma_pos: float = 1.0,
        clip: float = 0.05,
        eps: float = 1e-6,
        reduction: Literal["sum", "mean"] = "sum",
        activation: Literal["softmax", "sigmoid"] = "softmax",
        detach_focal_weight: bool = False,
    ) -> None:
        super().__init__()
        if gamma_neg < 0 or gamma_pos < 0:
            raise UserInputError(f"loss gammas must be >= 0, got gamma_neg={gamma_neg}, gamma_pos={gamma_pos}")
        if not 0 <= clip < 1:
            raise UserInputError(f"loss clip must be in [0, 1), got {clip}")
        if not eps > 0:
            raise UserInputError(f"loss eps must be > 0, got {eps}")
        if reduction not in ("sum", "mean"):
            raise UserInputError(f"loss reduction must be 'sum' or 'mean', got {reduction!r}")
        if activation not in ("softmax", "sigmoid"):
            raise UserInputError(f"loss activation must be 'softmax' or 'sigmoid', got {activation!r}")
        self.gamma_neg = float(gamma_neg)
        self.gamma_pos = float(gamma_pos)
        self.clip = float(clip)
        self.eps = float(eps)
        self.reduction = reduction
        self.activation = activation
        self.detach_focal_weight = detach_focal_weight

    @classmethod
    def from_config(cls, config: LossConfig) -> "AsymmetricLoss":
        """The loss described by `config`; its `weight` is left to the caller."""
        return cls(**config.model_dump(exclude={"weight"}))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The scalar loss of `logits` [..., 2] against `targets` [...] in {1, 0, -1}.

        The values of the targets are not checked here, which would wait for the device on every
        step: datasets check their labels once, when a split is loaded (`MultiLabelDataset`), and
        any other value counts as unknown."""
        if logits.shape[-1] != 2 or logits.shape[:-1] != targets.shape:
            raise ValueError(
                f"expected logits [..., 2] and targets [...] of the same leading shape, "
                f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
            )
        positive, negative = targets == 1, targets == 0

        if self.activation == "sigmoid":
            # softmax(x, 0) = (sigmoid(x), sigmoid(-x)): the sigmoid ASL is the 2-way case with a zero absence logit.
            logits = torch.stack([logits[..., 0], torch.zeros_like(logits[..., 0])], dim=-1)
        log_probs = torch.log_softmax(logits, dim=-1)
        log_presence, log_absence = log_probs.unbind(-1)
        presence, absence = log_probs.exp().unbind(-1)

        # log(max(p, eps)) as the reference, taken from log_softmax where p > eps for accuracy.
        floor = math.log(self.eps)
        log_p = torch.where(presence > self.eps, log_presence, floor)
        if self.clip > 0:
            # 1 - p_δ = min(1 - p + δ, 1), with the absence probability standing in for 1 - p.
            log_one_minus_p_shifted = torch.log(torch.clamp(absence + self.clip, max=1.0).clamp(min=self.eps))
        else:
            log_one_minus_p_shifted = torch.where(absence > self.eps, log_absence, floor)
        p_shifted = torch.clamp(presence - self.clip, min=0.0)

        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_focal_weight):
            weight_pos = _power(absence, self.gamma_pos)
            weight_neg = _power(p_shifted, self.gamma_neg)

        negative_terms = torch.where(negative, weight_neg * log_one_minus_p_shifted, 0.0)
        terms = torch.where(positive, weight_pos * log_p, negative_terms)
        total = -terms.sum()
        if self.reduction == "mean":
            return total / (positive | negative).sum().clamp(min=1)
        return total


def _power(base: torch.Tensor, exponent: float) -> torch.Tensor:
    """base ** exponent for base >= 0, with the gradient at base = 0 taken as 0.

    For 0 < exponent < 1 the derivative of x^γ at 0 is infinite; where the base is exactly 0 it
    comes from a clamp (p_δ below the shift) or a saturated softmax, whose own gradient there is 0,
    and inf · 0 would make the whole gradient NaN. The true limit of the composed gradient is 0.
    """
    at_zero = base <= 0
    safe_base = torch.where(at_zero, torch.ones_like(base), base)
    return torch.where(at_zero, 0.0**exponent, safe_base.pow(exponent))
