"""Can the text encoder say "no X"? PositiveCoOp's section 5.2 measurement on any backbone.

The paper finds that CLIP's features of "a photo of a X" and "not a photo of a X" are nearly the same
(pretraining captions almost never describe absence), which is why learned negative prompts fail.
`absence_cosines` measures that similarity, averaged over classes, so that backbones pre-trained
with different rates of absence in their captions (`pretrain.caption`) can be compared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainables.backbone.runtime import FrozenCLIP

PRESENCE_PROMPT = "a photo of a {}."
ABSENCE_PROMPTS = {"not_a_photo": "not a photo of a {}.", "photo_without": "a photo without a {}."}
"""The paper's negated prompt, and one naming the absence inside the photo."""


@torch.no_grad()
def text_features(clip: FrozenCLIP, texts: list[str]) -> torch.Tensor:
    """Unit EOT features [n, d] of `texts` through the frozen text encoder."""
    token_ids = clip.tokenize(texts).to(clip.device)
    return F.normalize(clip.encode_text(clip.token_embedding(token_ids), token_ids).float(), dim=-1)


def absence_cosines(clip: FrozenCLIP, classnames: list[str]) -> dict[str, float]:
    """{absence prompt: mean over classes of cos(presence prompt, absence prompt)}: near 1, the
    encoder cannot tell absence from presence."""
    names = [name.replace("_", " ") for name in classnames]
    present = text_features(clip, [PRESENCE_PROMPT.format(n) for n in names])
    return {
        key: float((present * text_features(clip, [prompt.format(n) for n in names])).sum(dim=-1).mean())
        for key, prompt in ABSENCE_PROMPTS.items()
    }
