"""The MLR family's trial config: `TrialConfig` (dataset, setup and its options, backbone, features,
training, ASL loss, label ratio, seed), what the orchestrator resolves one MLR trial to and the loop runs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from trainables.config import (
    BackboneConfig,
    DatasetConfig,
    FeatureConfig,
    OptimizerConfig,
    Strict,
)


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
    natively (CUDA, CPUs with AVX512-BF16 or AMX), else fp32 (`trainables.backbone.precision`)."""
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
