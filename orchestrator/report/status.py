"""`status EXPERIMENT`: finished, running, failed and pending trials at a glance, from MLflow.

The expected number of trials comes from the spec the experiment now stands at (its latest launch
run's `spec.yaml`), and only that spec's trials are counted (`plan.json`), so the command needs
nothing but the tracking store: it works from any machine that reaches the server.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from trainables.errors import UserInputError

from orchestrator.report.experiment import (
    experiment_id,
    launch_run,
    open_store,
    resolve_target,
    trials_of_spec,
)
from orchestrator.specs import ExperimentSpec, grid
from orchestrator.track.schema import TRAIN_LOSS


def expected_trials(client, launch) -> int | None:
    """Trials the launched spec has in all (None if the launch run has no readable spec)."""
    if launch is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(launch.info.run_id, "spec.yaml", folder)
        except Exception:  # noqa: BLE001 - an artifact store that lost the file: report what MLflow has
            return None
        spec = ExperimentSpec.model_validate(yaml.safe_load(Path(path).read_text()))
    return grid.Plan.of(spec).total_trials


def status_report(client, experiment_id: str, name: str, tracking_uri: str) -> str:
    launch = launch_run(client, experiment_id)
    trials, left_out = trials_of_spec(client, experiment_id, launch)
    counts = trials["status"].value_counts()
    running, failed = trials[trials["status"] == "RUNNING"], trials[trials["status"].isin(["FAILED", "KILLED"])]
    expected = expected_trials(client, launch)
    pending = max(expected - len(trials), 0) if expected is not None else None
    total = expected if expected is not None else len(trials)
    parts = [f"{counts.get('FINISHED', 0)} finished", f"{len(running)} running", f"{len(failed)} failed"]
    parts.append(f"{pending} pending" if pending is not None else "pending unknown (the launch run has no spec.yaml)")
    lines = [f"Experiment '{name}' ({tracking_uri}): {total} trials: {', '.join(parts)}"]
    if left_out:
        lines.append(f"  {left_out} trial run(s) of earlier versions of the spec are not in it now "
                     "(kept in MLflow, left out of `table`)")  # fmt: skip
    if launch is not None and launch.info.status == "RUNNING" and len(running):
        lines.append("  (RUNNING as last logged: if the driver was killed, `run` the spec again to resume)")
    for row in trials.sort_values("run_name").itertuples():
        if row.status == "RUNNING":
            epochs = len(client.get_metric_history(row.run_id, TRAIN_LOSS))
            lines.append(f"  running  {row.run_name}: {epochs} epoch(s) logged")
        elif row.status in ("FAILED", "KILLED"):
            lines.append(f"  failed   {row.run_name}: {row.error or 'stopped before it finished (no error recorded)'}")
    return "\n".join(lines)


def run(args) -> int:
    """The `status` command."""
    target = resolve_target(args.experiment, args.tracking_uri)
    client = open_store(target.tracking_uri)
    experiment = experiment_id(client, target)
    if not client.search_runs([experiment], max_results=1):
        raise UserInputError(f"MLflow experiment '{target.experiment_name}' has no runs yet")
    print(status_report(client, experiment, target.experiment_name, target.tracking_uri))
    return 0
