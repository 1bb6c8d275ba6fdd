"""NegLabel's grouped OOD score (Jiang et al., ICLR 2024; `mmcls/models/ood/clip_ood.py` `grouping`).

With cosine similarities of an image to the K ID labels and to the M negative labels, the
negatives are split into G groups by a seeded permutation (the last M mod G dropped), and

    score = mean_g  sum_{i in ID} softmax([scale * cos_ID, scale * cos_neg_g])_i

the share of the probability that stays on the ID labels when they compete with one group of
negatives. G = 1 is the plain softmax over all labels. LAPT scores with the same rule, its learned
prompts in place of the hand-crafted ones.
"""

from __future__ import annotations

from typing import Literal

import torch

NEGLABEL_SCALE = 100.0
"""NegLabel's `100 * cos` (temperature 1 on CLIP's scale)."""


def group_permutation(num_negatives: int, groups: int, seed: int = 0) -> torch.Tensor:
    """Indices [groups, M // groups] of the negatives in each group: a CPU `randperm` under `seed`
    (LAPT's postprocessor; NegLabel draws it on CUDA, which gives another permutation)."""
    if not 1 <= groups <= num_negatives:
        raise ValueError(f"groups must be between 1 and the number of negative labels ({num_negatives}), got {groups}")
    kept = num_negatives - num_negatives % groups
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(kept, generator=generator).view(groups, -1)


def grouped_score(
    id_cos: torch.Tensor, negative_cos: torch.Tensor, groups: int = 1, scale: float = NEGLABEL_SCALE, seed: int = 0,
    permutation: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """ID-ness scores [B] from cosines to the ID labels [B, K] and to the negative labels [B, M]
    (`permutation`: `group_permutation`'s, when already drawn)."""
    if permutation is None:
        permutation = group_permutation(negative_cos.shape[1], groups, seed)
    grouped = negative_cos[:, permutation.to(negative_cos.device)]  # [B, G, M // G]
    id_part = id_cos.unsqueeze(1).expand(-1, permutation.shape[0], -1)  # [B, G, K]
    probabilities = torch.softmax(scale * torch.cat([id_part, grouped], dim=-1), dim=-1)
    return probabilities[..., : id_cos.shape[1]].sum(dim=-1).mean(dim=-1)


def ood_scores(
    image_features: torch.Tensor, text: torch.Tensor, num_id: int, *, rule: Literal["grouped", "msp"], groups: int = 1,
    scale: float = NEGLABEL_SCALE, batch_size: int = 100,
) -> torch.Tensor:  # fmt: skip
    """ID-ness scores [N] of unit image features [N, d] against unit label features [K + M, d] (the
    K ID labels first): `grouped` is `grouped_score`, `msp` the maximum softmax probability over the
    ID labels. Scored `batch_size` images at a time, so that memory stays at one batch's
    [batch, G, K + M / G] whatever N is (ImageNet's 50,000 x 11,000 cosines at G = 100 would take
    20.5 GiB at once); each image's score is what scoring all of them at once gives."""
    permutation = group_permutation(text.shape[0] - num_id, groups) if rule == "grouped" else None
    scores = []
    for chunk in image_features.split(batch_size):
        cosines = chunk @ text.T
        if rule == "msp":
            scores.append(torch.softmax(scale * cosines[:, :num_id], dim=-1).max(dim=-1).values)
        else:
            scores.append(grouped_score(cosines[:, :num_id], cosines[:, num_id:], scale=scale, permutation=permutation))
    return torch.cat(scores) if scores else image_features.new_zeros(0)
