"""The resolved configuration of one trial: what the per-trial loop needs, nothing about scheduling.

The orchestrator's experiment spec composes these models (adding search ranges, scheduling and
tracking) and hands one resolved `TrialConfig` to every trial as a plain dict.
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
    """An open_clip model name, or one of the tiny configs shipped in `trainables/model_configs`."""
    pretrained: str | None = None
    """An open_clip pretrained tag (`openai`), a path to a checkpoint file, None for random weights,
    or `synthetic`: a tiny CLIP pre-trained contrastively on generated shapes (trainables.pretrain),
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
    were trained with where that is knowable (`trainables.backbones.resolve_quick_gelu`). Every
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
    """`online` mode: read the training images decoded and resized once (`trainables.decoded`,
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


class TrainingConfig(Strict):
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(100, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    lr: dict[str, float] = Field(default_factory=lambda: {"prompt": 0.002, "embedding": 1.0, "projector": 0.01})
    """Initial learning rate per parameter group; each setup names its groups (`prompt`,
    `embedding`, `projector`). Defaults are the PositiveCoOp paper's (section 4.2)."""
    warmup_epochs: int = Field(1, ge=0)
    warmup_lr: float = Field(1e-5, ge=0.0)
    """Constant learning rate of every group during warmup (Dassl's ConstantWarmupScheduler)."""
    scheduler: Literal["cosine", "constant"] = "cosine"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """`bf16`: autocast the text encoder and aggregation; `auto`: bf16 where the device computes it
    natively (CUDA, CPUs with AVX512-BF16 or AMX), else fp32 (`trainables.precision`)."""
    num_workers: int | None = Field(None, ge=0)
    """Image-decoding worker processes of the `online` feature mode (kept for the whole trial). None:
    the CPUs the trial holds (`TrialConfig.cpus`). The augmentation of an image is seeded by (trial
    seed, epoch, image), so the number changes nothing a trial computes."""
    cuda_graph: Literal["auto"] | bool = "auto"
    """Run each training step as one CUDA graph (`trainables.step`): `auto` on CUDA devices, off
    elsewhere; `true` on a device without CUDA fails the trial."""


class LossConfig(Strict):
    activation: Literal["softmax", "sigmoid"] = "softmax"
    """`softmax` over the (presence, absence) logits as the paper; `sigmoid` of the presence logit
    alone, the standard ASL of Ridnik et al."""
    gamma_neg: float = Field(2.0, ge=0.0)
    gamma_pos: float = Field(1.0, ge=0.0)
    clip: float = Field(0.05, ge=0.0, lt=1.0)
    eps: float = Field(1e-6, gt=0.0)
    reduction: Literal["sum", "mean"] = "sum"
    weight: float = Field(1.0, gt=0.0)
    """Multiplies the loss (the DualCoOp reference's `--loss_w`)."""
    detach_focal_weight: bool = False
    """True: the focal weight is a constant in the gradient, as the reference code
    (`disable_torch_grad_focal_loss`); False: the paper's equation 1 differentiated as written."""


class TrialConfig(Strict):
    setup: str
    setup_options: dict = Field(default_factory=dict)
    dataset: DatasetConfig
    backbone: BackboneConfig = BackboneConfig()
    features: FeatureConfig = FeatureConfig()
    training: TrainingConfig = TrainingConfig()
    loss: LossConfig = LossConfig()
    label_ratio: float = Field(gt=0.0, le=1.0)
    seed: int = 0
    cache_dir: Path
    """Where frozen features live; shared by every trial of a grid."""
    data_dir: Path
    """Where generated datasets (kind `synthetic`) are written on first use."""
    device: str = "auto"
    gpu_share: float = Field(1.0, gt=0.0, le=1.0)
    """The fraction of its GPU the trial holds (`resources.gpus_per_trial` below 1), for the
    default budget of resident features."""
    cpus: float | None = Field(None, gt=0.0)
    """The CPUs the trial holds (`resources.cpus_per_trial`), for its image-decoding workers. None:
    the CPUs this process may use."""
