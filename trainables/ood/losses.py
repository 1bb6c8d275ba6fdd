"""LAPT's training objective: soft cross-entropy over ID + negative labels, with two feature mixings.

Paper section 3.3; released code `openood/trainers/oodmixup_trainer.py` (REFERENCE.md 5):

- cross-modal mixing: z = normalize(lam * f + (1 - lam) * t_y), with t_y a frozen hand-crafted text
  feature of the sample's label, lam ~ Beta(a, b), one per batch; target onehot(y).
- cross-distribution mixing: each ID sample paired with a random negative-label sample and each
  negative-label sample with a random ID sample, z = normalize(lam * f_i + (1 - lam) * f_j),
  target = m * u + (1 - m) * (lam * y_i + (1 - lam) * y_j) with m = min(beta * lam, 1).

u, "the OOD label", is the uniform distribution over the negative labels here. The released code
appends it as one extra column that the logits do not have (its soft targets get L + 1 columns
against L logits, which its `SoftCrossEntropy` rejects); spread over the negative labels it keeps
the target's shape and puts the mass where the score counts it as OOD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c targets_c log softmax(logits)_c."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and soft targets {tuple(targets.shape)} differ in shape")
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def one_hot(labels: torch.Tensor, num_labels: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B, num_labels] with a 1 at each label: `F.one_hot` without its check of the values, which
    waits for the device."""
    return torch.zeros(len(labels), num_labels, dtype=dtype, device=labels.device).scatter_(1, labels[:, None], 1.0)


def cross_modal_mix(image_features: torch.Tensor, text_features: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """normalize(lam * f + (1 - lam) * t), both unit-normalised first; [B, d] each."""
    mixed = lam * F.normalize(image_features, dim=-1) + (1 - lam) * F.normalize(text_features, dim=-1)
    return F.normalize(mixed, dim=-1)


def draw_partners(labels: torch.Tensor, num_id: int, generator: torch.Generator) -> torch.Tensor | None:
    """The partner row of each sample of a batch (`labels` < `num_id` are ID): a random
    negative-label sample for each ID sample, a random ID sample for each negative-label one; None
    when the batch lacks either kind. Drawn on the host, ahead of the step that mixes them."""
    is_id = labels < num_id
    id_rows, negative_rows = torch.nonzero(is_id).flatten(), torch.nonzero(~is_id).flatten()
    if len(id_rows) == 0 or len(negative_rows) == 0:
        return None
    partners = torch.empty_like(labels)
    partners[id_rows] = negative_rows[torch.randint(len(negative_rows), (len(id_rows),), generator=generator)]
    partners[negative_rows] = id_rows[torch.randint(len(id_rows), (len(negative_rows),), generator=generator)]
    return partners


def cross_distribution_mix(
    features: torch.Tensor, labels: torch.Tensor, partners: torch.Tensor, num_id: int, num_labels: int,
    lam: float | torch.Tensor, beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Mixed features [B, d] and soft targets [B, num_labels] of a batch whose samples are paired
    with `partners` (`draw_partners`)."""
    unit = F.normalize(features, dim=-1)
    mixed = F.normalize(lam * unit + (1 - lam) * unit[partners], dim=-1)
    onehot = one_hot(labels, num_labels, features.dtype)
    uniform_negative = torch.zeros(num_labels, dtype=features.dtype, device=features.device)
    uniform_negative[num_id:] = 1.0 / (num_labels - num_id)
    shift = torch.clamp(beta * torch.as_tensor(lam, dtype=torch.float64), max=1.0)
    targets = shift * uniform_negative + (1 - shift) * (lam * onehot + (1 - lam) * onehot[partners])
    return mixed, targets
