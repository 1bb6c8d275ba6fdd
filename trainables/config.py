"""Configuration both task families share: the backbone, a multi-label dataset, how features are
read (cached, cached views or online), the optimiser. Each family's trial config composes these
(`trainables.mlr.config.TrialConfig`, `trainables.ood.config.OODTrialConfig`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BackboneConfig(Strict):
    model: str = "RN101"
    """An open_clip model name, or one of the tiny configs shipped in `trainables/backbone/model_configs`."""
    pretrained: str | None = None
    """An open_clip pretrained tag (`openai`), a path to a checkpoint file, None for random weights,
    or `synthetic`: a tiny CLIP pre-trained contrastively on generated shapes (trainables.backbone.pretrain),
    so that the prompt setups have a text encoder that knows the demo's class words."""
    image_size: int = Field(448, ge=32)
    synthetic_negation_rate: float = Field(0.0, ge=0.0, le=1.0)
    """`pretrained: synthetic` only: the fraction of pre-training captions that also name an absent
    class ("a circle and a star, no ring"); the negation testbed's variable."""
    synthetic_seed: int = Field(0, ge=0)
    """`pretrained: synthetic` only: the pre-training's seed (its image pool, batch order and
    captions): another draw of the same recipe."""
    quick_gelu: Literal["auto"] | bool = "auto"
    """The transformers' activation: QuickGELU (True), GELU (False), or `auto`: what the weights
    were trained with where that is knowable (`trainables.backbone.weights.resolve_quick_gelu`). Every
    released RN101 weight set used QuickGELU; a mismatch changes the text features by ~1%."""


class DatasetConfig(Strict):
    name: str
    """A short label used in trial names, tables and cache keys (`coco`, `voc`, `shapes`)."""
    kind: Literal["coco", "voc", "manifest", "synthetic"]
    root: Path | None = None
    """Dataset root. For `synthetic` it is where the generated images are cached (a default is derived)."""
    train_manifest: Path | None = None
    test_manifest: Path | None = None
    """`manifest` only: CSV or JSON Lines files listing image paths and class names."""
    voc_difficult: Literal["negative", "unknown"] = "negative"
    """VOC objects marked difficult: `negative` as the DualCoOp reference (skipped, so absent), or
    `unknown` (-1 at evaluation, ignored by mAP)."""
    skip_corrupt_images: bool = False
    """Skip unreadable images (each skip counted and reported) instead of failing the run."""
    synthetic_num_train: int = Field(256, ge=8)
    synthetic_num_test: int = Field(128, ge=8)
    synthetic_num_classes: int = Field(8, ge=2, le=16)
    synthetic_image_size: int = Field(128, ge=32)

    @model_validator(mode="after")
    def _kind_fields(self) -> "DatasetConfig":
        if self.kind in ("coco", "voc") and self.root is None:
            raise ValueError(f"dataset '{self.name}' of kind {self.kind} needs a root")
        if self.kind == "manifest" and (self.train_manifest is None or self.test_manifest is None):
            raise ValueError(f"dataset '{self.name}' of kind manifest needs train_manifest and test_manifest")
        return self


class FeatureConfig(Strict):
    mode: Literal["online", "cached", "cached_views"] = "cached"
    """`online`: encode every step (full augmentation); `cached`: encode each image once, no
    augmentation; `cached_views`: `views` augmented views per image, cycled over epochs."""
    views: int = Field(1, ge=1)
    augmentation: Literal["reference", "torchvision"] = "reference"
    """The RandAugment of the augmented modes: `reference`, the policy of the DualCoOp reference's
    PyPI `randaugment` 1.0.2 (`trainables.data.randaugment`), or `torchvision`'s, which trials used
    before this setting existed (their keys stay). Unused, and left out of dumps, in `cached` mode."""
    decoded_store: bool = True
    """`online` mode: read the training images decoded and resized once (`trainables.features.decoded`,
    uint8 under cache_dir/decoded) instead of decoding every JPEG in every epoch; the same pixels."""
    device_memory: float | None = Field(None, ge=0.0)
    """GiB of cached features a trial may keep on its device (uploaded once, batches gathered
    there); a split that does not fit is streamed from the cache through pinned memory. None: 80%
    of the GPU memory free at the trial's start and left to its share of the GPU
    (`resources.gpus_per_trial`), or a quarter of the available host memory on a CPU."""

    @model_serializer(mode="wrap")
    def _augmentation_where_it_augments(self, serialize):
        """`cached` mode augments nothing: its trials' keys and spec hashes stay what they were."""
        dumped = serialize(self)
        if self.mode == "cached" and isinstance(dumped, dict):
            dumped.pop("augmentation", None)
        return dumped

    @model_validator(mode="after")
    def _views_only_for_cached_views(self) -> "FeatureConfig":
        if self.mode != "cached_views" and self.views != 1:
            raise ValueError("features.views is only used with mode cached_views")
        return self


class OptimizerConfig(Strict):
    name: Literal["sgd"] = "sgd"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    nesterov: bool = False
