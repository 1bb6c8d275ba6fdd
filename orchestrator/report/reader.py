"""The trial runs of one MLflow experiment as a pandas frame, read once, and the picks of them
that every table and `status` make: the finished trials with a metric, the best trial of each cell.

A cell is (dataset, backbone, setup, label ratio, seed); within it the best trial by the chosen
metric is the cell's value. Only FINISHED runs count.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pandas as pd

from trainables.errors import UserInputError

from orchestrator.compat import UNTAGGED_FAMILY
from orchestrator.family import final_metrics, ranking_metrics
from orchestrator.track.schema import (
    CELL_KEY_TAG,
    CONFIG_HASH_TAG,
    ERROR_TAG,
    FAMILY_TAG,
    KEY_TAGS,
    STUDY_TAG,
    TRIAL_KEY_TAG,
    TRIAL_ROLE,
    role_filter,
)

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

BLOCK = ["dataset", "backbone"]

ROW = [*BLOCK, "setup"]

CELL = [*ROW, "label_ratio", "seed"]


def check_metric(metric: str) -> None:
    """A metric a trial can be judged by, some family's (`Family.ranking_metrics`)."""
    known = ranking_metrics()
    if metric not in known:
        raise UserInputError(f"unknown metric '{metric}': choose one of {', '.join(known)}")



def trial_runs(client: MlflowClient, experiment_id: str, condition: str = "") -> Iterator[Run]:
    """Every trial run of the experiment (and `condition`, an MLflow filter), page by page."""
    query = role_filter(TRIAL_ROLE) + (f" and {condition}" if condition else "")
    page_token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=1000, page_token=page_token)
        yield from page
        page_token = page.token
        if not page_token:
            return


def read_trials(client: MlflowClient, experiment_id: str) -> pd.DataFrame:
    """One row per trial run of the experiment, whatever its status.

    Columns: `run_id`, `run_name`, `status`, `error` (a failed run's reason, else None), `start_time`, the key tags (`label_ratio` as float, `seed` as int),
    `cell_key`, `family`, `trial_key`, every metric the run holds (its last value; the families' final
    metrics NaN where not logged) and every param as `params.<dotted name>` (strings, as MLflow stores them).
    """
    rows, finals = [], final_metrics()
    for run in trial_runs(client, experiment_id):
        tags = run.data.tags
        missing = [tag for tag in KEY_TAGS if tag not in tags]
        if missing:
            raise UserInputError(f"trial run {run.info.run_id} lacks the tag(s) {', '.join(missing)}")
        rows.append(
            {
                "run_id": run.info.run_id,
                "run_name": run.info.run_name,
                "status": run.info.status,
                "error": tags.get(ERROR_TAG),
                "start_time": run.info.start_time,
                **{tag: tags[tag] for tag in KEY_TAGS},
                "cell_key": tags.get(CELL_KEY_TAG),
                "family": tags.get(FAMILY_TAG, UNTAGGED_FAMILY),
                "trial_key": tags.get(TRIAL_KEY_TAG),
                "config_hash": tags.get(CONFIG_HASH_TAG),
                "study": tags.get(STUDY_TAG),
                **{metric: math.nan for metric in finals},
                **run.data.metrics,
                **{f"params.{name}": value for name, value in run.data.params.items()},
            }
        )
    columns = ["run_id", "run_name", "status", "error", "start_time", *KEY_TAGS, "cell_key", "family", "trial_key",
               "config_hash", "study", *finals]  # fmt: skip
    return pd.DataFrame(rows, columns=None if rows else columns).astype({"label_ratio": float, "seed": int})


def _finished_with(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The FINISHED trials that logged `metric`: the only ones a table or a search summary counts."""
    return trials[(trials["status"] == "FINISHED") & trials[metric].notna()]


def best_per_cell(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The best FINISHED trial of every cell by `metric` (a cell has several trials in a search or a loss grid).

    Adds `trials_in_cell`: how many finished trials the best was chosen from.
    """
    check_metric(metric)
    finished = _finished_with(trials, metric)
    best = finished.loc[finished.groupby(CELL)[metric].idxmax()]
    counts = finished.groupby(CELL).size().rename("trials_in_cell")
    return best.join(counts, on=CELL).reset_index(drop=True)


def searched_params(trials: pd.DataFrame) -> list[str]:
    """Params (`params.<name>` columns) that take more than one value among the finished trials of some cell."""
    finished = trials[trials["status"] == "FINISHED"]
    params = [column for column in finished.columns if column.startswith("params.")]
    if finished.empty or not params:
        return []
    varying = finished.groupby(CELL)[params].nunique().gt(1).any()
    return sorted(varying[varying].index)


def search_trials(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Finished trials of the cells that were searched (more than one finished trial with the metric)."""
    check_metric(metric)
    finished = _finished_with(trials, metric)
    return finished[finished.groupby(CELL)["run_id"].transform("size") > 1]
