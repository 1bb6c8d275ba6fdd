"""The experiment spec's schema: `ExperimentSpec`, one pydantic model with a model per section
(`orchestrator.specs.sections`), unknown keys rejected.

It is a whole ablation grid: the datasets, backbone and setups, the label ratios and seeds, how each
trial trains, what is searched, how trials are scheduled, and where results go. Reading a file is
`orchestrator.specs.load`; the rules across fields are `orchestrator.specs.checks`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SerializationInfo,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from trainables.config import DatasetConfig, FeatureConfig, Strict

from orchestrator.compat import spec_state
from orchestrator.family import defaulted_sections, registered, sections, setup_names
from orchestrator.specs.paths import (
    STORAGE_SCHEMES,
    absolute,
    is_uri,
    resolve_tracking_uri,
    without_paths,
)
from orchestrator.specs.sections import (
    BackboneSpec,
    GridSearch,
    NoScheduler,
    Resources,
    Scheduler,
    Search,
    _unique,
)


class ExperimentSpec(Strict):
    """A whole experiment: the grid (datasets x setups x label ratios x seeds), how each trial
    trains, what is searched, how trials are scheduled, and where results go."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Names the MLflow experiment and the results `<storage>/<name>`."""
    datasets: list[DatasetConfig] = Field(default_factory=list)
    """The multi-label datasets the setups that train on them read (a family with a section names its own)."""
    backbone: BackboneSpec = BackboneSpec()
    features: FeatureConfig = FeatureConfig()
    setups: list[str] = Field(min_length=1)
    setup_options: dict[str, dict] = Field(default_factory=dict)
    """Keyword options per setup name, passed to its family's setup."""
    label_ratios: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(default_factory=list)
    """The fractions of known labels of the setups that train on `datasets` (a family with a section may have its own)."""
    seeds: list[int] = Field(min_length=1)
    lr_per_setup: dict[str, dict[str, Annotated[float, Field(ge=0.0)]]] = Field(default_factory=dict)
    """Learning rates of one setup's groups that replace `training.lr`'s for that setup's trials
    (`{negative_coop: {prompt: 0.02}}`): each setup at the rates its own search found."""
    search: Search = GridSearch()
    scheduler: Scheduler = NoScheduler()
    resources: Resources = Resources()
    storage: str = Field("runs", validate_default=True)
    """Where Ray Tune keeps results and checkpoints, `<storage>/<name>`: a folder (on a cluster, one
    every node mounts at the same path) or an object store URI (`s3://bucket/prefix`; MinIO and
    other S3 endpoints through AWS_ENDPOINT_URL, credentials as boto3 reads them, on every node)."""
    state_dir: Path | None = Field(None, validate_default=True)
    """The driver's own files: the Optuna database, the run's metadata, the trials MLflow missed.
    Default: the results folder itself when `storage` is a folder, `runs/<name>` of the working
    directory when it is a URI (keep it on a volume that outlives the driver to resume there)."""
    data_dir: Path = Field(Path("runs/data"), validate_default=True)
    """Where generated (synthetic) datasets are written."""
    cache_dir: Path = Field(Path("runs/cache"), validate_default=True)
    """The frozen-feature cache, shared by every trial."""
    tracking_uri: str | None = Field(None, validate_default=True)
    """MLflow tracking URI; default `sqlite:///<working dir>/mlflow.db`."""
    _sections: dict[str, BaseModel] = PrivateAttr(default_factory=dict)
    """The task families' own sections, by key (`section(key)`, or `spec.<key>`): a family's section
    (the spec has it or not) and the top-level keys a family owns (every spec has them)."""

    @model_validator(mode="wrap")
    @classmethod
    def _family_sections(cls, data, handler):
        """A registered family's section key (`orchestrator.family.sections`) is a field of the spec,
        validated by the family's model; its errors are reported under the key like any field's."""
        if not isinstance(data, dict):
            return handler(data)
        models, defaulted = sections(), defaulted_sections()
        errors: list[InitErrorDetails] = []
        validated = {}
        for key, model in models.items():
            value = data.get(key)
            if value is None and key in defaulted:
                value = {}
            if value is not None:
                try:
                    validated[key] = model.model_validate(value)
                except ValidationError as error:
                    errors += [_under(key, detail) for detail in error.errors()]
        spec = None
        try:
            spec = handler({key: value for key, value in data.items() if key not in models})
        except ValidationError as error:
            errors = [_under(None, detail) for detail in error.errors()] + errors
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        spec._sections = validated
        return spec

    @model_serializer(mode="wrap")
    def _with_sections(self, handler, info: SerializationInfo) -> dict:
        dumped = handler(self)
        for key in sections():
            if info.include is None or key in info.include:
                section = self._sections.get(key)
                dumped[key] = None if section is None else section.model_dump(mode=info.mode)
        return dumped

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(spec_state(state, type(self).model_fields))

    def __getattr__(self, name: str):
        """A family's section as an attribute (`spec.loss`, `spec.training`), as the spec's own fields are."""
        sections = (self.__pydantic_private__ or {}).get("_sections", {}) if name != "__pydantic_private__" else {}
        if name in sections:
            return sections[name]
        return super().__getattr__(name)

    def section(self, key: str) -> BaseModel | None:
        """A task family's section, None when the spec has none."""
        return self._sections.get(key)

    @model_validator(mode="before")
    @classmethod
    def _search_metric(cls, data):
        """An Optuna search not told a metric tells its studies the ranking metric of the first family
        whose setups the spec runs."""
        search = data.get("search") if isinstance(data, dict) else None
        if not (isinstance(search, dict) and search.get("kind") == "optuna" and search.get("metric") is None):
            return data
        named = [setup for setup in data.get("setups") or [] if isinstance(setup, str)]
        families = [family for family in registered() if set(named) & set(family.setups())]
        return {**data, "search": {**search, "metric": families[0].ranking_metrics()[0]}} if families else data

    @field_validator("setups")
    @classmethod
    def _known_setups(cls, value: list[str]) -> list[str]:
        known = setup_names()
        unknown = [name for name in value if name not in known]
        if unknown:
            raise ValueError(f"unknown setup(s) {unknown}; known: {sorted(known)}")
        return _unique(value)

    @field_validator("label_ratios", "seeds")
    @classmethod
    def _no_duplicates(cls, value: list) -> list:
        return _unique(value)

    @field_validator("datasets")
    @classmethod
    def _dataset_paths(cls, value: list[DatasetConfig]) -> list[DatasetConfig]:
        _unique([d.name for d in value])
        paths = ("root", "train_manifest", "test_manifest")
        return [
            d.model_copy(update={f: absolute(getattr(d, f)) for f in paths if getattr(d, f) is not None})
            for d in value
        ]

    @field_validator("data_dir", "cache_dir")
    @classmethod
    def _absolute_path(cls, value: Path) -> Path:
        return absolute(value)

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        scheme = urlparse(value).scheme
        if scheme in STORAGE_SCHEMES:
            if not urlparse(value).netloc:
                raise ValueError(f"'{value}' names no bucket: {scheme}://bucket/prefix")
            return value.rstrip("/")
        if "://" in value:
            raise ValueError(f"'{value}': storage is a folder or a {'/'.join(STORAGE_SCHEMES)} URI")
        return str(absolute(Path(value)))

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None:
            return absolute(value)
        if "storage" not in info.data or "name" not in info.data:
            return None  # reported by their own validation
        if is_uri(info.data["storage"]):
            return absolute(Path("runs") / info.data["name"])
        return Path(info.data["storage"]) / info.data["name"]

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri(cls, value: str | None) -> str:
        return resolve_tracking_uri(value)

    @property
    def results(self) -> str:
        """Ray Tune's experiment folder or URI for this spec, `<storage>/<name>`."""
        return f"{self.storage}/{self.name}"


RESULT_FIELDS = ("name", "datasets", "backbone", "features", "setups", "setup_options", "label_ratios",
                 "seeds", "lr_per_setup", "search", "scheduler")  # fmt: skip
"""What decides the trials and their results, with the families' sections; paths, resources and
the tracking URI do not."""


def _under(key: str | None, error: dict) -> InitErrorDetails:
    """A pydantic error as raised again (its type and message as they were), its location under
    `key` (a family's section)."""
    loc = (key, *error["loc"]) if key else error["loc"]
    return {"type": PydanticCustomError(error["type"], error["msg"]), "loc": loc, "input": error["input"]}


def spec_hash(spec: ExperimentSpec) -> str:
    """A short stable hash of what decides the results; resuming with a different one is refused."""
    payload = without_paths(spec.model_dump(mode="json", include=set(RESULT_FIELDS)))
    # A family's section counts when the spec has it: specs without one keep the hashes they had before the family
    # (the sections every spec holds were its fields then, hashed the same).
    payload |= without_paths({key: section.model_dump(mode="json") for key, section in spec._sections.items()})
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
