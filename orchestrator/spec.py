"""The experiment spec: one YAML file that describes a whole ablation grid, validated all at once.

`load_spec` reads the file, applies `--set key=value` overrides, validates the structure with
pydantic (unknown keys rejected) and then the cross-field rules, and raises one `SpecError` that
lists every problem as `<file>: <dotted.field>: <message>`. Relative paths resolve against the
working directory, so everything a run writes lands under it unless the spec says otherwise.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import typing
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, Discriminator, Field, Tag, ValidationError, ValidationInfo, field_validator, model_validator

from trainables.config import (
    BackboneConfig,
    DatasetConfig,
    FeatureConfig,
    LossConfig,
    Strict,
    TrainingConfig,
)
from trainables.errors import UserInputError

from orchestrator.ood_spec import LAPT_SETUP, OODSpec

SEARCH_SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
"""Where a bare spec file name (`smoke.yaml`) is looked up when it is not in the working directory."""

_TAG = "~"
"""Prefix of the union tags below; pydantic puts tags in error locations, and the report drops them."""

_ALL_GROUPS = frozenset({"prompt", "embedding", "projector"})
"""Every learning-rate group a setup may have (docs/ARCHITECTURE.md); the default `training.lr` names all three."""

STORAGE_SCHEMES = ("s3", "gs", "abfs", "abfss", "hdfs")
"""Object stores Ray Tune writes to through pyarrow.fs (S3, through MinIO, is the one tested here)."""

_TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


class SpecError(UserInputError):
    """Every problem found in one spec, one line each: `<source>: <dotted.field>: <message>`."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# -- loss settings: a fixed value, a grid axis or a search range -----------------------------------


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


def _axis_kind(value: Any) -> str:
    if isinstance(value, (dict, SearchRange)):
        return f"{_TAG}range"
    if isinstance(value, (list, tuple)):
        return f"{_TAG}list"
    return f"{_TAG}number"


def _loss_axis(name: str) -> Any:
    """The type of a numeric loss setting, with the bounds `LossConfig` puts on that field."""
    value = Annotated[float, *LossConfig.model_fields[name].metadata]
    return Annotated[
        Annotated[value, Tag(f"{_TAG}number")]
        | Annotated[list[value], Field(min_length=1), Tag(f"{_TAG}list")]
        | Annotated[SearchRange, Tag(f"{_TAG}range")],
        Discriminator(_axis_kind),
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
    Annotated[Annotated[float, Field(ge=0.0)], Tag(f"{_TAG}number")] | Annotated[SearchRange, Tag(f"{_TAG}range")],
    Discriminator(_axis_kind),
]


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


# -- search, scheduler, resources ------------------------------------------------------------------


def _kind_of(value: Any) -> str | None:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return f"{_TAG}{kind}" if kind is not None else None


class GridSearch(Strict):
    """Every trial of every cell is given by the spec (list axes of the loss, if any)."""

    kind: Literal["grid"] = "grid"


class OptunaSearch(Strict):
    """One Optuna study per cell over the loss and learning-rate ranges; `num_samples` trials per cell."""

    kind: Literal["optuna"]
    sampler: Literal["tpe", "random", "cmaes"] = "tpe"
    num_samples: int = Field(ge=1)
    metric: Literal["best_mAP", "mAP"] = "best_mAP"
    """What a finished trial tells its study: the best epoch's mAP, or the last epoch's (`mAP`)."""
    mode: Literal["max", "min"] = "max"
    seed: int = 0


class NoScheduler(Strict):
    kind: Literal["none"] = "none"


class AshaScheduler(Strict):
    """Asynchronous successive halving on the per-epoch mAP, within each cell (max_t = epochs)."""

    kind: Literal["asha"]
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)


Search = Annotated[
    Annotated[GridSearch, Tag(f"{_TAG}grid")] | Annotated[OptunaSearch, Tag(f"{_TAG}optuna")],
    Discriminator(_kind_of, custom_error_type="invalid_kind", custom_error_message="kind must be grid or optuna"),
]
Scheduler = Annotated[
    Annotated[NoScheduler, Tag(f"{_TAG}none")] | Annotated[AshaScheduler, Tag(f"{_TAG}asha")],
    Discriminator(_kind_of, custom_error_type="invalid_kind", custom_error_message="kind must be none or asha"),
]


class Resources(Strict):
    cpus_per_trial: float = Field(1.0, gt=0.0)
    gpus_per_trial: float = Field(0.0, ge=0.0)
    """A fraction (0.5) packs several trials on one GPU; above 1 it must be a whole number."""
    max_concurrent_trials: int | None = Field(None, ge=1)
    """None: as many as the cluster's CPUs and GPUs allow."""
    max_failures: int = Field(0, ge=0)
    """How often Ray restarts a failed trial from its last checkpoint, on any node: set it on a
    cluster whose nodes can go away. Every failure counts, a diverged (NaN) trial's too."""

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and not value.is_integer():
            raise ValueError("above 1, gpus_per_trial must be a whole number")
        return value

    @property
    def gpu_share(self) -> float:
        """The fraction of one GPU a trial holds (1 with a GPU or more, or none)."""
        return self.gpus_per_trial if 0 < self.gpus_per_trial < 1 else 1.0


# -- the spec --------------------------------------------------------------------------------------


def _absolute(path: Path) -> Path:
    return (Path.cwd() / path.expanduser()).absolute()


def _unique(values: list) -> list:
    duplicates = [value for value, count in Counter(values).items() if count > 1]
    if duplicates:
        raise ValueError(f"duplicate values {duplicates}")
    return values


class ExperimentSpec(Strict):
    """A whole experiment: the grid (datasets x setups x label ratios x seeds), how each trial
    trains, what is searched, how trials are scheduled, and where results go."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Names the MLflow experiment and the results `<storage>/<name>`."""
    datasets: list[DatasetConfig] = Field(default_factory=list)
    """The multi-label datasets of the MLR setups."""
    backbone: BackboneSpec = BackboneSpec()
    features: FeatureConfig = FeatureConfig()
    setups: list[str] = Field(min_length=1)
    setup_options: dict[str, dict] = Field(default_factory=dict)
    """Keyword options per setup name, passed to `trainables.setups.build`."""
    label_ratios: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(default_factory=list)
    """The MLR setups' fractions of known labels (LAPT's are `ood.label_ratios`)."""
    seeds: list[int] = Field(min_length=1)
    training: TrainingSpec = TrainingSpec()
    lr_per_setup: dict[str, dict[str, Annotated[float, Field(ge=0.0)]]] = Field(default_factory=dict)
    """Learning rates of one setup's groups that replace `training.lr`'s for that setup's trials
    (`{negative_coop: {prompt: 0.02}}`): each setup at the rates its own search found."""
    loss: LossSpec = LossSpec()
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
    ood: OODSpec | None = None
    """What the `lapt` setup (the OOD-detection family) runs on; see `orchestrator.ood_spec`."""

    @field_validator("setups")
    @classmethod
    def _known_setups(cls, value: list[str]) -> list[str]:
        from trainables import setups

        known = [*setups.names(), LAPT_SETUP]
        unknown = [name for name in value if name not in known]
        if unknown:
            raise ValueError(f"unknown setup(s) {unknown}; known: {sorted(known)}")
        return _unique(value)

    @property
    def mlr_setups(self) -> list[str]:
        """The multi-label setups of `setups` (all but `lapt`)."""
        return [name for name in self.setups if name != LAPT_SETUP]

    @property
    def runs_ood(self) -> bool:
        return LAPT_SETUP in self.setups

    @field_validator("label_ratios", "seeds")
    @classmethod
    def _no_duplicates(cls, value: list) -> list:
        return _unique(value)

    @field_validator("datasets")
    @classmethod
    def _dataset_paths(cls, value: list[DatasetConfig]) -> list[DatasetConfig]:
        _unique([d.name for d in value])
        absolute = ("root", "train_manifest", "test_manifest")
        return [
            d.model_copy(update={f: _absolute(getattr(d, f)) for f in absolute if getattr(d, f) is not None})
            for d in value
        ]

    @field_validator("data_dir", "cache_dir")
    @classmethod
    def _absolute_path(cls, value: Path) -> Path:
        return _absolute(value)

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
        return str(_absolute(Path(value)))

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None:
            return _absolute(value)
        if "storage" not in info.data or "name" not in info.data:
            return None  # reported by their own validation
        if is_uri(info.data["storage"]):
            return _absolute(Path("runs") / info.data["name"])
        return Path(info.data["storage"]) / info.data["name"]

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri(cls, value: str | None) -> str:
        return resolve_tracking_uri(value)

    @property
    def results(self) -> str:
        """Ray Tune's experiment folder or URI for this spec, `<storage>/<name>`."""
        return f"{self.storage}/{self.name}"

    def search_space(self, setup: str) -> dict[str, SearchRange]:
        """What Optuna searches in `setup`'s cells, by parameter name: the loss ranges (`gamma_neg`)
        and the ranges of the setup's own learning-rate groups (`lr.prompt`) that `lr_per_setup`
        does not fix for it."""
        from trainables import setups

        fixed_here = self.lr_per_setup.get(setup, {})
        lr = {
            f"{LR_PARAM_PREFIX}{group}": interval
            for group, interval in self.training.lr_ranges().items()
            if group in setups.lr_groups(setup) and group not in fixed_here
        }
        return {**self.loss.ranges(), **lr}

    def learning_rates(self, setup: str, sampled: dict[str, float] | None = None) -> dict[str, float]:
        """The learning rate of each of `setup`'s groups: `lr_per_setup`, else the value Optuna
        sampled (`{"lr.prompt": 0.01}`), else `training.lr`."""
        from trainables import setups

        sampled, own = sampled or {}, self.lr_per_setup.get(setup, {})
        rates = {}
        for group in setups.lr_groups(setup):
            value = own.get(group, self.training.lr.get(group))
            if isinstance(value, SearchRange):
                value = sampled[f"{LR_PARAM_PREFIX}{group}"]
            if value is not None:  # a missing group is reported by validation
                rates[group] = value
        return rates


def is_uri(storage: str) -> bool:
    """Whether a spec's `storage` is an object store URI rather than a folder."""
    return urlparse(storage).scheme in STORAGE_SCHEMES


def resolve_tracking_uri(value: str | None) -> str:
    """An absolute MLflow tracking URI: by default MLflow's MLFLOW_TRACKING_URI, else the working
    directory's `mlflow.db`; a relative SQLite path made absolute; ValueError for anything that is
    not a tracking URI."""
    if value is None:
        value = os.environ.get("MLFLOW_TRACKING_URI")
    if value is None:
        return f"sqlite:///{_absolute(Path('mlflow.db'))}"
    scheme = urlparse(value).scheme
    if scheme not in _TRACKING_SCHEMES:
        raise ValueError(f"'{value}' is not a tracking URI; expected sqlite:///path.db or http(s)://host:port")
    if scheme == "sqlite":
        path = value.removeprefix("sqlite:///")
        if path in ("", ":memory:") or value == path:
            raise ValueError("an sqlite tracking URI needs a file: sqlite:///path/to/mlflow.db")
        return f"sqlite:///{_absolute(Path(path))}"
    return value.rstrip("/")


def require_existing_store(tracking_uri: str, hint: str) -> None:
    """Readers must not open a missing SQLite store: MLflow would create an empty one in its place."""
    if urlparse(tracking_uri).scheme == "sqlite":
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        if not database.is_file():
            raise UserInputError(f"no MLflow store at {database} ({hint})")


RESULT_FIELDS = ("name", "datasets", "backbone", "features", "setups", "setup_options", "label_ratios",
                 "seeds", "training", "lr_per_setup", "loss", "search", "scheduler", "ood")  # fmt: skip
"""What decides the trials and their results; paths, resources and the tracking URI do not."""


def spec_hash(spec: ExperimentSpec) -> str:
    """A short stable hash of what decides the results; resuming with a different one is refused."""
    payload = without_paths(spec.model_dump(mode="json", include=set(RESULT_FIELDS)))
    if payload["ood"] is None:
        del payload["ood"]  # specs without LAPT keep the hashes they had before the OOD family
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


PATH_FIELDS = frozenset({"root", "train_manifest", "test_manifest", "classnames_file", "wordnet_dir", "word_list"})
"""Where data lives: the same data may live elsewhere on another machine, so hashes and keys leave these out."""

EXECUTION_FIELDS = frozenset({"cuda_graph", "device_memory", "gpu_share"})
"""How a trial uses its device, not what it computes: hashes and keys leave these out too, so
that tuning them neither reruns a finished trial nor changes the keys of runs made before them."""


def without_paths(value: Any) -> Any:
    """`value` (JSON-able) with every `PATH_FIELDS` and `EXECUTION_FIELDS` key dropped, at any depth."""
    if isinstance(value, dict):
        return {k: without_paths(v) for k, v in value.items() if k not in PATH_FIELDS | EXECUTION_FIELDS}
    if isinstance(value, list):
        return [without_paths(v) for v in value]
    return value


# -- loading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedSpec:
    spec: ExperimentSpec
    path: Path


def resolve_spec_path(name: str | Path) -> Path:
    """A path as given if it exists, else a bare file name looked up in `search_spaces/`."""
    path = Path(name).expanduser()
    if path.is_file():
        return path.absolute()
    if len(path.parts) == 1:
        for candidate in (SEARCH_SPACES_DIR / path, SEARCH_SPACES_DIR / f"{path}.yaml"):
            if candidate.is_file():
                return candidate
    raise UserInputError(f"spec file not found: {name} (looked in the working directory and {SEARCH_SPACES_DIR})")


def read_yaml(path: Path) -> dict:
    """A spec file's top-level mapping; one-line UserInputError for invalid YAML or another shape."""
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise UserInputError(f"{path}: invalid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise UserInputError(f"{path}: expected a mapping of spec fields at the top level")
    return raw


def apply_override(raw: dict, assignment: str) -> str:
    """Set one `dotted.key=value` (the value parsed as YAML; list items by index) in `raw`; return the key."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserInputError(f"--set {assignment}: expected key=value, e.g. --set training.epochs=2")
    value = yaml.safe_load(text) if text.strip() else None
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserInputError(f"--set {key}: {where} is not an index of a list of {len(node)}")
            part = int(part)
        elif not isinstance(node, dict):
            raise UserInputError(f"--set {key}: {'.'.join(parts[:depth])} is a value, not a section")
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = {}
            node = node[part]
    return key


def _field_type(annotation: Any, part: str | int) -> Any:
    """The type one location step leads to: a model's field, a list's items, a dict's values."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin is list and isinstance(part, int):
        return typing.get_args(annotation)[0]
    if origin is dict and isinstance(part, str):
        return typing.get_args(annotation)[1]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and part in annotation.model_fields:
        return annotation.model_fields[part].annotation
    return None  # a union (search, scheduler) or a plain value: no single set of keys


def _valid_keys(loc: tuple) -> list[str]:
    """The field names of the section holding `loc`'s last key, for the unknown-key message."""
    annotation: Any = ExperimentSpec
    for part in loc[:-1]:
        annotation = _field_type(annotation, part)
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith(_TAG))) or "(top level)"


def _format_error(error: dict) -> tuple[str, str]:
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        keys = _valid_keys(loc)
        hint = f"; expected one of: {', '.join(keys)}" if keys else ""
        return _dotted(loc), f"unknown key{hint}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] not in ("missing", "value_error") and "input" in error:
        shown = repr(error["input"])
        message += f" (got {shown[:60] + '...' if len(shown) > 60 else shown})"
    return _dotted(loc), message


def _source(field: str, path: Path, overridden: list[str]) -> str:
    if any(field == key or field.startswith(f"{key}.") for key in overridden):
        return "--set"
    return str(path)


def load_spec(name: str | Path, overrides: list[str] | tuple[str, ...] = (), check_data: bool = True) -> LoadedSpec:
    """Read, override and validate a spec; raise `SpecError` listing every problem.

    `check_data=False` skips the dataset layout checks (for commands that do not touch the data).
    """
    path = resolve_spec_path(name)
    raw = read_yaml(path)
    overridden = [apply_override(raw, assignment) for assignment in overrides]
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as error:
        problems = [_format_error(e) for e in error.errors()]
        raise SpecError([f"{_source(field, path, overridden)}: {field}: {message}" for field, message in problems])
    problems = semantic_problems(spec, check_data=check_data)
    if problems:
        raise SpecError([f"{_source(field, path, overridden)}: {field}: {message}" for field, message in problems])
    return LoadedSpec(spec=spec, path=path)


def semantic_problems(spec: ExperimentSpec, check_data: bool = True) -> list[tuple[str, str]]:
    """Cross-field rules, all of them: `(dotted.field, message)` per problem."""
    problems: list[tuple[str, str]] = []
    problems += _search_problems(spec)
    problems += _setup_problems(spec)
    problems += _family_problems(spec)
    problems += _backbone_problems(spec)
    if spec.scheduler.kind == "asha" and spec.scheduler.grace_period > spec.training.epochs:
        problems.append(
            (
                "scheduler.grace_period",
                f"{spec.scheduler.grace_period} is more than training.epochs ({spec.training.epochs})",
            )
        )
    for field in ("data_dir", "cache_dir"):
        # `--fresh` deletes the experiment folder; it must not hold data shared with other specs.
        if getattr(spec, field).is_relative_to(spec.state_dir):
            inside = f"{getattr(spec, field)} lies inside this spec's folder {spec.state_dir}"
            problems.append((field, inside))
    if check_data:
        problems += _dataset_problems(spec)
        problems += _ood_data_problems(spec)
    return problems


def _backbone_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    from trainables.backbones import SYNTHETIC_WEIGHTS
    from trainables.clip import check_model

    problems = []
    try:
        check_model(spec.backbone.model, spec.backbone.image_size)
    except UserInputError as error:
        problems.append(("backbone", str(error)))
    synthetic = {"synthetic_negation_rate": spec.backbone.negation_rates, "synthetic_seed": spec.backbone.pretraining_seeds}
    for field, values in synthetic.items():
        if spec.backbone.pretrained != SYNTHETIC_WEIGHTS and values != [0]:
            problems.append((f"backbone.{field}", f"only `pretrained: {SYNTHETIC_WEIGHTS}` weights are pre-trained here"))
        if spec.runs_ood and len(values) > 1:
            problems.append((f"backbone.{field}", f"a list is an axis of the MLR setups; run '{LAPT_SETUP}' in a spec of its own"))
    return problems


def _family_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """Each task family has what it runs on."""
    problems = []
    if spec.mlr_setups and not spec.datasets:
        problems.append(("datasets", f"setups {spec.mlr_setups} need at least one multi-label dataset"))
    if spec.mlr_setups and not spec.label_ratios:
        problems.append(("label_ratios", f"setups {spec.mlr_setups} need at least one label ratio"))
    if spec.runs_ood and spec.ood is None:
        problems.append(("ood", f"setup '{LAPT_SETUP}' needs an ood section (id_dataset, ood_sets, ...)"))
    if spec.runs_ood and spec.scheduler.kind == "asha":
        problems.append(("scheduler.kind", f"asha stops trials by their mAP; setup '{LAPT_SETUP}' reports AUROC: run it without asha"))
    return problems


def _ood_data_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """The OOD family's data and corpus, checked before any work starts (generated sets need nothing)."""
    from trainables.ood import data as ood_data
    from trainables.ood.train import corpus

    if not spec.runs_ood or spec.ood is None:
        return []
    problems = []
    ood = spec.ood
    if ood.id_dataset.kind != "synthetic":
        try:
            ood_data.id_dataset(ood.id_dataset, "test", spec.data_dir)
        except UserInputError as error:
            problems.append(("ood.id_dataset", str(error)))
    pools = [(f"ood.ood_sets.{i}", s) for i, s in enumerate(ood.ood_sets)]
    pools += [("ood.collector.pool", ood.collector.pool)] if ood.collector.pool is not None else []
    for field, image_set in pools:
        if image_set.kind != "synthetic":
            try:
                ood_data.ood_set(image_set, spec.data_dir)
            except UserInputError as error:
                problems.append((field, str(error)))
    if any(variant != "zero_shot" for variant in ood.variants):
        try:
            corpus(ood.negatives)
        except UserInputError as error:
            problems.append(("ood.negatives", str(error)))
    return problems


def _search_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """Grid axes, search ranges and the search kind agree (loss settings and learning rates)."""
    problems = []
    axes, ranges = spec.loss.axes(), spec.loss.ranges()
    lr_ranges = spec.training.lr_ranges()
    if spec.search.kind == "optuna":
        for field in axes:
            problems.append((f"loss.{field}", "a list is a grid axis; with search.kind optuna give a range {low, high}"))
        if not any(spec.search_space(setup) for setup in spec.mlr_setups):
            problems.append(
                ("search.kind", "optuna needs at least one loss setting or training.lr group given as a range {low, high}")
            )
    else:
        for field in ranges:
            problems.append((f"loss.{field}", "a range {low, high} needs search.kind optuna; give a number or a list"))
        for group in lr_ranges:
            problems.append((f"training.lr.{group}", "a range {low, high} needs search.kind optuna; give a number"))
    # Range ends must themselves be valid loss values (gamma >= 0, 0 <= clip < 1, ...).
    for field, interval in ranges.items():
        for end in ("low", "high"):
            try:
                LossConfig(**{field: getattr(interval, end)})
            except ValidationError as error:
                problems.append((f"loss.{field}.{end}", error.errors()[0]["msg"]))
    return problems


def _setup_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """Check each setup's options by building it on a tiny stand-in backbone, and its learning rates.

    Building is the one authority on options, and on a 32-pixel random `ViT-tiny` it takes
    milliseconds; options do not depend on the real backbone. Groups are the setup's `lr_groups`.
    `setup_options` and `lr_per_setup` may name any known setup, also one the spec does not run
    (so `--set setups=[baseline]` narrows a spec without editing it); a name no setup has is an error.
    """
    from trainables import backbones, setups

    problems = []
    configured = {"setup_options": spec.setup_options, "lr_per_setup": spec.lr_per_setup}
    for field, per_setup in configured.items():
        for name in per_setup:
            if name not in setups.names():
                problems.append((f"{field}.{name}", f"unknown setup '{name}'; known: {sorted(setups.names())}"))
    probe = backbones.load("ViT-tiny", None, image_size=32)
    for name in set(spec.mlr_setups) | set(spec.setup_options):
        if name not in setups.names():
            continue
        try:
            setups.build(name, ["cat", "dog"], probe, **spec.setup_options.get(name, {}))
        except UserInputError as error:
            problems.append((f"setup_options.{name}", str(error)))
    known = {group for name in setups.names() for group in setups.lr_groups(name)}
    unknown = sorted(set(spec.training.lr) - (_ALL_GROUPS | known))
    if unknown:
        problems.append(("training.lr", f"unknown parameter group(s) {unknown}; groups: {sorted(_ALL_GROUPS)}"))
    for name in spec.mlr_setups:
        missing = sorted(set(setups.lr_groups(name)) - set(spec.training.lr) - set(spec.lr_per_setup.get(name, {})))
        if missing:
            problems.append(("training.lr", f"setup '{name}' needs a learning rate for group(s) {missing}"))
    for name, rates in spec.lr_per_setup.items():
        if name in setups.names() and set(rates) - set(setups.lr_groups(name)):
            extra, own = sorted(set(rates) - set(setups.lr_groups(name))), list(setups.lr_groups(name))
            problems.append((f"lr_per_setup.{name}", f"setup '{name}' has no parameter group(s) {extra}; its groups: {own}"))
    return problems


def _dataset_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    from trainables import data

    problems = []
    for index, dataset in enumerate(spec.datasets):
        try:
            data.check(dataset, spec.data_dir)
        except UserInputError as error:
            problems.append((f"datasets.{index}", str(error)))
    return problems

