"""DualCoOp: a presence and an absence prompt per class, both through CLIP's text encoder.

Reference: `sunxm2357/DualCoOp` `models/dualcoop.py` (`MLCPromptLearner`, `DualCoop`).
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.backbone.runtime import FrozenCLIP
from trainables.mlr.setups.base import PromptOptions, PromptSetup
from trainables.prompts import PromptLearner


class DualCoOpOptions(PromptOptions):
    positive_ctx_init: str | None = None
    """Initialise the presence context from these words (DualCoOp's `--positive_prompt`)."""
    negative_ctx_init: str | None = None
    """Initialise the absence context from these words (DualCoOp's `--negative_prompt`)."""


class DualCoOp(PromptSetup):
    Options = DualCoOpOptions
    lr_groups = ("prompt",)

    def __init__(self, classnames: list[str], clip: FrozenCLIP, options: DualCoOpOptions):
        super().__init__(classnames, clip, options)
        self.positive_prompt = PromptLearner(
            classnames, clip, n_ctx=options.n_ctx, csc=options.csc, ctx_init=options.positive_ctx_init
        )
        self.negative_prompt = PromptLearner(
            classnames, clip, n_ctx=options.n_ctx, csc=options.csc, ctx_init=options.negative_ctx_init
        )

    def presence_absence(self) -> tuple[torch.Tensor, torch.Tensor]:
        # One text-encoder pass over both prompt sets when their lengths agree (same class names
        # and context sizes), as DualCoOp encodes its 2K prompts in one batch.
        positive, negative = self.positive_prompt(), self.negative_prompt()
        if positive[0].shape != negative[0].shape:
            return self.clip.encode_text(*positive), self.clip.encode_text(*negative)
        embeddings = torch.cat([positive[0], negative[0]])
        token_ids = torch.cat([positive[1], negative[1]])
        return self.clip.encode_text(embeddings, token_ids).split(self.num_classes)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"prompt": [self.positive_prompt.ctx, self.negative_prompt.ctx]}
