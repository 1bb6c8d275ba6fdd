"""Shared fixtures: tiny random-weight CLIP backbones (built once per test session, frozen, CPU)."""

from __future__ import annotations

import pytest

from trainables import clip


TINY_IMAGE_SIZE = 128


@pytest.fixture(scope="session")
def tiny_rn() -> clip.FrozenCLIP:
    """The `RN-tiny` ModifiedResNet backbone at 128 px (dense features [B, 17, 64])."""
    return clip.load("RN-tiny", None, image_size=TINY_IMAGE_SIZE)


@pytest.fixture(scope="session")
def tiny_vit() -> clip.FrozenCLIP:
    """The `ViT-tiny` backbone (patch 16) at 128 px (dense features [B, 64, 64])."""
    return clip.load("ViT-tiny", None, image_size=TINY_IMAGE_SIZE)
