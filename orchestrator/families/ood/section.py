"""The `ood:` section of a spec (`OODSpec`), the LAPT variants it compares (the OOD table's rows),
and the trial config of one variant's cell."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from trainables.config import BackboneConfig, Strict
from trainables.ood.config import (
    CollectorConfig,
    IDDatasetConfig,
    MixingConfig,
    NegativesConfig,
    OODSetConfig,
    OODTrainingConfig,
    OODTrialConfig,
)

LAPT_SETUP = "lapt"
"""The setup name that puts the OOD family's cells into a spec."""

VARIANTS: dict[str, dict] = {
    "lapt": {"variant": "lapt"},
    "lapt_no_cross_modal": {"variant": "lapt", "mixing": {"cross_modal": False}},
    "lapt_no_cross_distribution": {"variant": "lapt", "mixing": {"cross_distribution": False}},
    "lapt_no_mixing": {"variant": "lapt", "mixing": {"cross_modal": False, "cross_distribution": False}},
    "neglabel": {"variant": "neglabel"},
    "zero_shot": {"variant": "zero_shot"},
}
"""The OOD table's rows: LAPT, LAPT without each mixing, NegLabel's untuned score, and the zero-shot
maximum softmax probability of hand-crafted ID prompts."""

UNTUNED = ("neglabel", "zero_shot")
"""Variants that train nothing: one cell each, whatever the label ratios and seeds."""

Variant = Literal["lapt", "lapt_no_cross_modal", "lapt_no_cross_distribution", "lapt_no_mixing", "neglabel", "zero_shot"]


class OODSpec(Strict):
    """What the `lapt` setup runs on (`trainables.ood.config` holds each field's meaning)."""

    id_dataset: IDDatasetConfig
    ood_sets: list[OODSetConfig] = Field(min_length=1)
    variants: list[Variant] = Field(default_factory=lambda: ["lapt"], min_length=1)
    label_ratios: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(default_factory=lambda: [1.0], min_length=1)
    """For LAPT: the fraction of each label's collected training images used."""
    backbone: BackboneConfig | None = None
    """Default: the spec's backbone."""
    n_ctx: int = Field(2, ge=1)
    groups: int = Field(100, ge=1)
    negatives: NegativesConfig = NegativesConfig()
    collector: CollectorConfig = CollectorConfig(kind="id_train")
    mixing: MixingConfig = MixingConfig()
    training: OODTrainingConfig = OODTrainingConfig()

    @model_validator(mode="after")
    def _distinct(self) -> "OODSpec":
        names = [s.name for s in self.ood_sets]
        if len(set(names)) != len(names):
            raise ValueError(f"ood_sets names repeat: {names}")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants repeat: {self.variants}")
        return self


def variant_config(
    ood: OODSpec, variant: str, backbone: BackboneConfig, label_ratio: float, seed: int, cache_dir, data_dir, device: str = "auto"
) -> OODTrialConfig:
    """The trial config of one variant's cell."""
    overrides = VARIANTS[variant]
    mixing = ood.mixing.model_copy(update=overrides.get("mixing", {}))
    return OODTrialConfig(
        options={"variant": overrides["variant"], "n_ctx": ood.n_ctx, "groups": ood.groups},
        id_dataset=ood.id_dataset,
        ood_sets=ood.ood_sets,
        backbone=ood.backbone or backbone,
        negatives=ood.negatives,
        collector=ood.collector,
        mixing=mixing,
        # An untuned variant evaluates once: its one "epoch" trains nothing.
        training=ood.training if overrides["variant"] == "lapt" else ood.training.model_copy(update={"epochs": 1}),
        label_ratio=label_ratio,
        seed=seed,
        cache_dir=cache_dir,
        data_dir=data_dir,
        device=device,
    )
