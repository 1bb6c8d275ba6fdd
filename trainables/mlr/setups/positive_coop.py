"""PositiveCoOp: the presence prompt through CLIP's text encoder, a learned absence embedding r_{j,-}."""

from __future__ import annotations

from trainables.mlr.setups.single_prompt import SinglePromptSetup


class PositiveCoOp(SinglePromptSetup):
    prompted_side = "presence"
