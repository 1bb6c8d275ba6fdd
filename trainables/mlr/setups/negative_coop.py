"""NegativeCoOp: the absence prompt through CLIP's text encoder, a learned presence embedding r_{j,+}."""

from __future__ import annotations

from trainables.mlr.setups.single_prompt import SinglePromptSetup


class NegativeCoOp(SinglePromptSetup):
    prompted_side = "absence"
