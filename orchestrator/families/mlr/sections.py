"""The MLR family's spec sections, at the spec's top level: `loss` (the ASL settings, each a value,
a grid axis or a search range) and `training` (`TrainingConfig`, a learning-rate group possibly a
search range). The family registers them (`MLR.default_sections`): every spec holds them, at their
defaults when absent.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from trainables.config import Strict
from trainables.mlr.config import LossConfig, TrainingConfig

from orchestrator.specs.sections import TAG, SearchRange, axis_kind

ALL_GROUPS = frozenset({"prompt", "embedding", "projector"})
"""Every learning-rate group a setup may have (docs/ARCHITECTURE.md); the default `training.lr` names all three."""


def _loss_axis(name: str) -> Any:
    """The type of a numeric loss setting, with the bounds `LossConfig` puts on that field."""
    value = Annotated[float, *LossConfig.model_fields[name].metadata]
    return Annotated[
        Annotated[value, Tag(f"{TAG}number")]
        | Annotated[list[value], Field(min_length=1), Tag(f"{TAG}list")]
        | Annotated[SearchRange, Tag(f"{TAG}range")],
        Discriminator(axis_kind),
    ]


def _loss_default(name: str) -> Any:
    return LossConfig.model_fields[name].default


NUMERIC_LOSS_FIELDS = ("gamma_neg", "gamma_pos", "clip", "eps", "weight")
"""The loss settings that may be a grid axis (a list) or a search range; the rest are fixed."""


class LossSpec(Strict):
    """`LossConfig`'s fields; the numeric ones may also be a list (grid axis) or a range (Optuna)."""

    activation: Literal["softmax", "sigmoid"] = _loss_default("activation")
    gamma_neg: _loss_axis("gamma_neg") = _loss_default("gamma_neg")
    gamma_pos: _loss_axis("gamma_pos") = _loss_default("gamma_pos")
    clip: _loss_axis("clip") = _loss_default("clip")
    eps: _loss_axis("eps") = _loss_default("eps")
    reduction: Literal["sum", "mean"] = _loss_default("reduction")
    weight: _loss_axis("weight") = _loss_default("weight")
    detach_focal_weight: bool = _loss_default("detach_focal_weight")

    def axes(self) -> dict[str, list[float]]:
        """The grid axes: numeric settings given as lists."""
        return {f: getattr(self, f) for f in NUMERIC_LOSS_FIELDS if isinstance(getattr(self, f), list)}

    def ranges(self) -> dict[str, SearchRange]:
        """The Optuna search space: numeric settings given as ranges."""
        return {f: getattr(self, f) for f in NUMERIC_LOSS_FIELDS if isinstance(getattr(self, f), SearchRange)}

    def fixed(self) -> dict[str, Any]:
        """Every setting given as a single value."""
        return {
            f: getattr(self, f)
            for f in LossSpec.model_fields
            if not isinstance(getattr(self, f), (list, SearchRange))
        }


LearningRate = Annotated[
    Annotated[Annotated[float, Field(ge=0.0)], Tag(f"{TAG}number")] | Annotated[SearchRange, Tag(f"{TAG}range")],
    Discriminator(axis_kind),
]


class TrainingSpec(TrainingConfig):
    """`TrainingConfig`, where a learning-rate group may also be a search range for Optuna
    (`lr: {prompt: {low: 1e-5, high: 1e-1, log: true}}`)."""

    lr: dict[str, LearningRate] = Field(default_factory=lambda: dict(TrainingConfig().lr))

    def lr_ranges(self) -> dict[str, SearchRange]:
        """The learning-rate groups Optuna searches."""
        return {group: value for group, value in self.lr.items() if isinstance(value, SearchRange)}

    def config(self, lr: dict[str, float]) -> TrainingConfig:
        """The trial's `TrainingConfig`, with `lr` (every group, searched ones sampled)."""
        return TrainingConfig(**{**self.model_dump(exclude={"lr"}), "lr": lr})


LR_PARAM_PREFIX = "lr."
"""Optuna parameter names of learning-rate groups (`lr.prompt`); loss settings are named by field (`gamma_neg`)."""
