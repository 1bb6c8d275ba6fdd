"""The sections of an experiment spec every family shares: the backbone with its synthetic axes,
the search, the scheduler, the resources, and the search range (`{low, high}`) a family's setting
may be given as; a family's own sections are its own (`Family.section`, `Family.default_sections`).
The union tags (`~number`, `~list`, `~range`, `~optuna`) steer pydantic's errors.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from trainables.config import BackboneConfig, Strict

TAG = "~"
"""Prefix of the union tags of the spec's sections (a family's too); pydantic puts tags in error
locations, and the report drops them."""

# -- search ranges -------------------------------------------------------------------------------


class SearchRange(Strict):
    """A continuous interval for Optuna (`{low: 0, high: 4}`; `log: true` samples on a log scale)."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "SearchRange":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


def axis_kind(value: Any) -> str:
    if isinstance(value, (dict, SearchRange)):
        return f"{TAG}range"
    if isinstance(value, (list, tuple)):
        return f"{TAG}list"
    return f"{TAG}number"


NegationRate = Annotated[float, Field(ge=0.0, le=1.0)]
PretrainingSeed = Annotated[int, Field(ge=0)]


class BackboneSpec(BackboneConfig):
    """`BackboneConfig`, where `synthetic_negation_rate` and `synthetic_seed` may also be lists:
    grid axes of synthetic backbones, one pre-trained checkpoint per (rate, seed) (the negation
    testbed; several pre-training seeds separate the rate's effect from one checkpoint's draw)."""

    synthetic_negation_rate: NegationRate | Annotated[list[NegationRate], Field(min_length=1)] = 0.0
    synthetic_seed: PretrainingSeed | Annotated[list[PretrainingSeed], Field(min_length=1)] = 0

    @field_validator("synthetic_negation_rate", "synthetic_seed")
    @classmethod
    def _distinct(cls, value: float | list) -> float | list:
        return _unique(value) if isinstance(value, list) else value

    @property
    def negation_rates(self) -> list[float]:
        rate = self.synthetic_negation_rate
        return list(rate) if isinstance(rate, list) else [rate]

    @property
    def pretraining_seeds(self) -> list[int]:
        seed = self.synthetic_seed
        return list(seed) if isinstance(seed, list) else [seed]

    def configs(self) -> list[BackboneConfig]:
        """One `BackboneConfig` per (negation rate, pre-training seed), rates outermost."""
        fields = self.model_dump(exclude={"synthetic_negation_rate", "synthetic_seed"})
        return [
            BackboneConfig(**fields, synthetic_negation_rate=rate, synthetic_seed=seed)
            for rate, seed in itertools.product(self.negation_rates, self.pretraining_seeds)
        ]


# -- search, scheduler, resources ------------------------------------------------------------------


def _kind_of(value: Any) -> str | None:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return f"{TAG}{kind}" if kind is not None else None


class GridSearch(Strict):
    """Every trial of every cell is given by the spec (list axes of the loss, if any)."""

    kind: Literal["grid"] = "grid"


class OptunaSearch(Strict):
    """One Optuna study per cell over the loss and learning-rate ranges; `num_samples` trials per cell."""

    kind: Literal["optuna"]
    sampler: Literal["tpe", "random", "cmaes"] = "tpe"
    num_samples: int = Field(ge=1)
    metric: str | None = None
    """What a finished trial tells its study: `best_<metric>` (its best epoch's) or `<metric>` (its
    last epoch's) of the metric its family ranks by; None: the best epoch's of the spec's first family."""
    mode: Literal["max", "min"] = "max"
    seed: int = 0


class NoScheduler(Strict):
    kind: Literal["none"] = "none"


class AshaScheduler(Strict):
    """Asynchronous successive halving within each cell, on the per-epoch metric its family ranks by (max_t = epochs)."""

    kind: Literal["asha"]
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)


Search = Annotated[
    Annotated[GridSearch, Tag(f"{TAG}grid")] | Annotated[OptunaSearch, Tag(f"{TAG}optuna")],
    Discriminator(_kind_of, custom_error_type="invalid_kind", custom_error_message="kind must be grid or optuna"),
]
Scheduler = Annotated[
    Annotated[NoScheduler, Tag(f"{TAG}none")] | Annotated[AshaScheduler, Tag(f"{TAG}asha")],
    Discriminator(_kind_of, custom_error_type="invalid_kind", custom_error_message="kind must be none or asha"),
]


class Resources(Strict):
    cpus_per_trial: float = Field(1.0, gt=0.0)
    gpus_per_trial: float = Field(0.0, ge=0.0)
    """A fraction (0.5) packs several trials on one GPU; at most 1: a trial computes on one device."""
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    """Where trials and the feature cache's encoders compute: `auto`, the GPU Ray gives each (a GPU
    it gives that torch cannot use is a one-line error), else the CPU; or a device named outright
    (`cpu` runs on the CPU even on a node whose GPUs torch cannot use)."""
    max_concurrent_trials: int | None = Field(None, ge=1)
    """None: as many as the cluster's CPUs and GPUs allow."""
    fuse: Literal["auto", "off"] = "auto"
    """`auto`: the fixed trials that read the same data stream (same data, backbone, features, seed,
    batch size and epochs: their family says which fields) train in groups, one Ray trial per group
    on one device, each batch read, augmented and encoded once for all of them, every member still a
    trial of its own (run, row, checkpoint, failure); `off`: a Ray trial per trial. Optuna's samples
    and ASHA-scheduled specs run unfused (`orchestrator.run.fusion`)."""
    max_members: int | None = Field(None, ge=1)
    """The most trials in a fused group; None: as many as the device's memory holds beside the shared
    backbone, measured as `describe` measures a trial, and no more than spreads them over every trial slot."""
    max_failures: int = Field(0, ge=0)
    """How often Ray restarts a failed trial from its last checkpoint, on any node: set it on a
    cluster whose nodes can go away. Every failure counts, a diverged (NaN) trial's too."""

    @field_validator("fuse", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        """YAML reads `fuse: off` as false (and `on` as true)."""
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("gpus_per_trial")
    @classmethod
    def _one_gpu_at_most(cls, value: float) -> float:
        if value > 1:
            raise ValueError(
                f"gpus_per_trial is {value:g}, but a trial computes on one GPU: use 1, or a fraction (0.5) to share a GPU"
            )
        return value

    @property
    def gpu_share(self) -> float:
        """The fraction of one GPU a trial holds (1 with a GPU or more, or none)."""
        return self.gpus_per_trial if 0 < self.gpus_per_trial < 1 else 1.0


def _unique(values: list) -> list:
    duplicates = [value for value, count in Counter(values).items() if count > 1]
    if duplicates:
        raise ValueError(f"duplicate values {duplicates}")
    return values
