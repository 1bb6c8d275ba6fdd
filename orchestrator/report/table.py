"""The `table` command: compare the setups of one experiment, from its MLflow runs (never from logs).

Reads the spec's trial runs once (`aggregate.TableInput`) and asks each task family for its tables
(`Family.tables`); prints them (rich by default), writes every format and the plots with `--out DIR`,
and logs them as artifacts (`tables/`, `plots/`) of the experiment's launch run so they sit next to
the runs in the MLflow UI.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from trainables.errors import UserInputError

from orchestrator.family import ranking_metrics
from orchestrator.report.aggregate import TableInput
from orchestrator.report.render import FORMATS
from orchestrator.track.schema import LAUNCH_ROLE, ROLE_TAG

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "experiment",
        help="an MLflow experiment name, or the spec file that made it (a path, or a .yaml name in search_spaces/)",
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: the spec's tracking_uri, else sqlite:///<working dir>/mlflow.db)",
    )
    parser.add_argument(
        "--metric", choices=ranking_metrics(),
        help="what a cell's value is and how its best trial is chosen (default: each family's first)",
    )
    parser.add_argument(
        "--reference", choices=("none", "paper"), default="none",
        help="paper: add the papers' rows where a family's table has them (and a delta row per setup)",
    )
    parser.add_argument("--format", choices=FORMATS, default="rich", help="what is printed (default: rich)")
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="write every format under DIR/tables and the plots under DIR/plots"
    )
    parser.add_argument(
        "--no-log",
        action="store_true",
        help="do not log the tables and plots as artifacts of the experiment's launch run",
    )


def log_outputs(client: MlflowClient, experiment: str, launch: Run | None, out_dir: Path) -> str:
    """Log `out_dir/tables` and `out_dir/plots` under the launch run (made if the experiment has none); its id."""
    if launch is None:
        run_id = client.create_run(experiment, tags={ROLE_TAG: LAUNCH_ROLE}, run_name="aggregate").info.run_id
        client.set_terminated(run_id, "FINISHED")
    else:
        run_id = launch.info.run_id
    for folder in ("tables", "plots"):
        if (out_dir / folder).is_dir():
            client.log_artifacts(run_id, str(out_dir / folder), artifact_path=folder)
    return run_id


def run(args: argparse.Namespace) -> int:
    """The `table` command; returns the exit code."""
    from orchestrator.family import registered
    from orchestrator.report.experiment import (
        experiment_id,
        launch_run,
        open_store,
        resolve_target,
        trials_of_spec,
    )

    target = resolve_target(args.experiment, args.tracking_uri)
    client = open_store(target.tracking_uri)
    experiment = experiment_id(client, target)
    launch = launch_run(client, experiment)
    all_trials, left_out = trials_of_spec(client, experiment, launch)
    if all_trials.empty and not left_out:
        raise UserInputError(f"MLflow experiment '{target.experiment_name}' has no trial runs")
    if left_out:
        print(f"{left_out} trial run(s) of earlier versions of the spec, not in its grid now, are left out "
              "(they stay in MLflow)", file=sys.stderr)  # fmt: skip
    report = TableInput(client, experiment, target, launch, all_trials, args.metric, args.reference)
    parts = [part for family in registered() if not all_trials.empty for part in family.tables(report)]
    for part in parts:
        part.show(args.format)

    failed = all_trials[all_trials["status"] == "FAILED"]
    if not failed.empty:  # the table shows their cells as missing or with fewer seeds (†); here is why
        print(f"{len(failed)} failed trial(s), not in the table:", file=sys.stderr)
        for row in failed.sort_values("run_name").itertuples():
            print(f"  {row.run_name}: {row.error or 'stopped or crashed before its first epoch'}", file=sys.stderr)

    if args.out is None and args.no_log:
        return 0
    with tempfile.TemporaryDirectory(prefix="orchestrator-table-") as scratch:
        out_dir = args.out if args.out is not None else Path(scratch)
        for part in parts:
            part.write(out_dir)
        if args.out is not None:
            print(f"Wrote tables to {out_dir / 'tables'} and plots to {out_dir / 'plots'}", file=sys.stderr)
        if not args.no_log:
            run_id = log_outputs(client, experiment, launch, out_dir)
            where = f"run {run_id} of MLflow experiment '{target.experiment_name}'"
            print(f"Logged tables/ and plots/ to {where}", file=sys.stderr)
    return 0
