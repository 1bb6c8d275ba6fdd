"""The experiment a reader names, and what its MLflow store says of it.

`table` and `status` take an experiment name or the spec file that made it (`resolve_target`); the
store's launch run holds the spec as last launched, and with it which trial runs belong to the
experiment now (`current_membership`: a grown or edited spec leaves earlier trials out).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from trainables.errors import UserInputError

from orchestrator.report.reader import read_trials
from orchestrator.specs import (
    read_yaml,
    require_existing_store,
    resolve_spec_path,
    resolve_tracking_uri,
)
from orchestrator.specs.grid import Membership
from orchestrator.track.schema import (
    LAUNCH_ROLE,
    LAUNCHED_AT_TAG,
    PLAN_ARTIFACT,
    SPEC_PATH_TAG,
    role_filter,
)
from orchestrator.track.store import check_reachable

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient


SPEC_SUFFIXES = (".yaml", ".yml")
"""A name that is not a file but ends so is a spec file name (looked up in search_spaces/), not an experiment."""


@dataclass(frozen=True)
class Target:
    """The experiment to aggregate, where its store is, and the spec that made it when it was named."""

    experiment_name: str
    tracking_uri: str
    spec_path: Path | None = None


def spec_file(name: str) -> Path | None:
    """The spec file `name` means (a path, or a bare .yaml name in search_spaces/); None for an experiment name."""
    path = Path(name).expanduser()
    if not path.is_file() and path.suffix not in SPEC_SUFFIXES:
        return None
    return resolve_spec_path(path)


def read_spec(path: Path) -> dict:
    raw = read_yaml(path)
    if not isinstance(raw.get("name"), str):
        raise UserInputError(f"{path}: no experiment name (a top-level `name:`)")
    return raw


def resolve_target(experiment: str, tracking_uri: str | None = None) -> Target:
    """Experiment name and tracking URI from the command line: `--tracking-uri`, else the spec's, else the default."""
    path = spec_file(experiment)
    spec = read_spec(path) if path else {}
    name = spec.get("name", experiment)
    uri = tracking_uri or spec.get("tracking_uri") or resolve_tracking_uri(None)
    return Target(name, uri, path)


def open_store(tracking_uri: str) -> MlflowClient:
    """A client on an existing store: an SQLite file must exist (MLflow would make an empty one), a server answer."""
    require_existing_store(tracking_uri, "pass --tracking-uri, or run from the experiment's folder")
    check_reachable(tracking_uri)  # a server must answer; a file store needs none
    from mlflow.tracking import MlflowClient

    # The readers download small files (spec.yaml, plan.json): no progress bar over the report.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(client: MlflowClient, target: Target) -> str:
    experiment = client.get_experiment_by_name(target.experiment_name)
    if experiment is None or experiment.lifecycle_stage != "active":
        raise UserInputError(f"no MLflow experiment named '{target.experiment_name}' in {target.tracking_uri}")
    return experiment.experiment_id


def launch_run(client: MlflowClient, experiment: str) -> Run | None:
    """The launch run (`orchestrator.role=launch`) of the spec the experiment now stands at: the one
    launched last (a spec launched again, reverted to, say, is the current one again)."""
    runs = client.search_runs([experiment], filter_string=role_filter(LAUNCH_ROLE), max_results=1000)
    return max(runs, key=lambda run: (float(run.data.tags.get(LAUNCHED_AT_TAG, 0)), run.info.start_time), default=None)


def current_membership(client: MlflowClient, launch: Run | None) -> Membership | None:
    """Which trials the current spec has (its launch run's `plan.json`); None for a launch made
    before launches recorded it, whose spec has every trial of the experiment."""
    if launch is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(launch.info.run_id, PLAN_ARTIFACT, folder)
        except Exception:  # noqa: BLE001 - MLflow raises several kinds for a missing artifact
            return None
        return Membership.from_json(Path(path).read_text())


def in_current_spec(trials: pd.DataFrame, membership: Membership | None) -> pd.Series:
    """Which rows of `read_trials` are trials of the current spec."""
    if membership is None:
        return trials["run_id"].notna()
    return trials.apply(lambda row: membership.contains(row["cell_key"], row["config_hash"], row["trial_key"], row["study"]), axis=1).astype(bool)



def trials_of_spec(client: MlflowClient, experiment_id: str, launch: Run | None) -> tuple[pd.DataFrame, int]:
    """The trial runs of the spec as last launched (`read_trials`), and how many runs of earlier
    versions of the spec (a grid since shrunk or edited) that leaves out."""
    everything = read_trials(client, experiment_id)
    if everything.empty:
        return everything, 0
    current = in_current_spec(everything, current_membership(client, launch))
    return everything[current], int((~current).sum())

def spec_source(client: MlflowClient, target: Target, launch: Run | None) -> tuple[str, dict | None]:
    """The spec to name in a rerun command, and its contents when readable.

    In order: the spec given on the command line, the launch run's `spec_path` tag, its `spec.yaml`
    artifact in a local artifact store, else the experiment name.
    """
    candidates = [target.spec_path]
    if launch is not None:
        if SPEC_PATH_TAG in launch.data.tags:
            candidates.append(Path(launch.data.tags[SPEC_PATH_TAG]))
        artifacts = urlparse(launch.info.artifact_uri)
        if artifacts.scheme in ("", "file"):
            candidates.append(Path(unquote(artifacts.path)) / "spec.yaml")
    for path in candidates:
        if path is not None and path.is_file():
            return str(path), read_spec(path)
    return target.experiment_name, None
