"""The feature-cache entries a plan's trials read, each once: what `run.fill` encodes before any
trial starts. Each task family says which entries its trials read (`Family.cache_entries`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables import data
from trainables.config import BackboneConfig
from trainables.features.encoding import Encoding, View

from orchestrator.family import in_spec, named
from orchestrator.specs import grid
from orchestrator.specs.grid import synthetic_variant


@dataclass(frozen=True)
class Entry:
    """One cache entry the trials read: a split of a dataset at a view and an encoding (dense
    features, or CLIP's global embedding), on a backbone."""

    family: str
    """The task family that reads the entry, and opens its dataset (`Family.open_cached_set`)."""
    dataset: Any
    """The config of the dataset or image set (with a `name`), as its family builds it."""
    backbone: BackboneConfig
    split: data.Split
    view: View = "test"
    encoding: Encoding = "dense"

    def open(self, data_dir: Path) -> data.MultiLabelDataset:
        return named(self.family).open_cached_set(self.dataset, self.split, data_dir)

    @property
    def dataset_key(self) -> str:
        """What tells the datasets of entries apart (configs holding lists are not hashable)."""
        return f"{type(self.dataset).__name__}:{self.dataset.model_dump_json()}:{self.split}"

    @property
    def key(self) -> str:
        """What tells entries apart."""
        return f"{self.dataset_key}:{self.view}:{self.encoding}:{self.backbone.model_dump_json()}"

    @property
    def label(self) -> str:
        backbone = self.backbone
        return f"{backbone.model}{synthetic_variant(backbone.synthetic_negation_rate, backbone.synthetic_seed)}"


def entries(plan: grid.Plan) -> list[Entry]:
    """Every cache entry the plan's trials read, each once, family by family."""
    found = [entry for family in in_spec(plan.spec) for entry in family.cache_entries(plan)]
    return list({entry.key: entry for entry in found}.values())
