"""One prompt through CLIP's text encoder, the other side a learned feature-space embedding (paper section 3.2).

PositiveCoOp learns the presence prompt t_{j,+} and an absence embedding r_{j,-}; NegativeCoOp is
its mirror image. Reference: `SamyakR99/PositiveCoOp` `models/positivecoop.py`, `models/negativecoop.py`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from trainables.backbone.runtime import FrozenCLIP
from trainables.mlr.setups.base import PromptOptions, PromptSetup
from trainables.prompts import PromptLearner


class SinglePromptOptions(PromptOptions):
    ctx_init: str | None = None
    """Initialise the context from these words' token embeddings (e.g. "a photo of a")."""
    embedding_init: Literal["normal"] = "normal"
    """The learned embedding's initialisation: N(0, 1), the reference's `torch.randn(K, d)`."""
    text_residual: bool = False
    """The reference's `txt_prompt_learn`: a learned N(0, 1) [K, d] residual added to the encoded
    prompt before normalisation. The paper does not describe it, hence off by default."""


class SinglePromptSetup(PromptSetup):
    """A CoOp prompt for one side (`prompted_side`), a learned embedding for the other."""

    Options = SinglePromptOptions
    lr_groups = ("prompt", "embedding")
    prompted_side: Literal["presence", "absence"]

    def __init__(self, classnames: list[str], clip: FrozenCLIP, options: SinglePromptOptions):
        super().__init__(classnames, clip, options)
        self.prompt_learner = PromptLearner(
            classnames, clip, n_ctx=options.n_ctx, csc=options.csc, ctx_init=options.ctx_init
        )
        shape = (self.num_classes, clip.embed_dim)
        # Drawn by the CPU generator whatever the device, so a seed starts the same on a GPU and a CPU.
        self.learned_embedding = nn.Parameter(torch.randn(shape).to(clip.device))
        self.text_residual = nn.Parameter(torch.randn(shape).to(clip.device)) if options.text_residual else None

    def prompt_features(self) -> torch.Tensor:
        """Encoded prompts [K, d], plus the residual when enabled."""
        features = self.prompt_learner.encode()
        if self.text_residual is not None:
            features = features + self.text_residual
        return features

    def presence_absence(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prompted_side == "presence":
            return self.prompt_features(), self.learned_embedding
        return self.learned_embedding, self.prompt_features()

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        embedding = [self.learned_embedding] + ([self.text_residual] if self.text_residual is not None else [])
        return {"prompt": [self.prompt_learner.ctx], "embedding": embedding}
