"""The `table` command: compare the setups of one experiment, from its MLflow runs (never from logs).

Prints the comparison table (rich by default), the best configuration of every searched cell with the
command that reruns it, writes every format and the plots with `--out DIR`, and logs them as
artifacts (`tables/`, `plots/`) of the experiment's launch run so they sit next to the runs in the
MLflow UI.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from trainables.errors import UserInputError

from orchestrator.report.render import FORMATS
from orchestrator.track.schema import LAUNCH_ROLE, RANKING_METRICS, ROLE_TAG

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from orchestrator.report.comparison_table import ComparisonTable


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
        "--metric", choices=RANKING_METRICS, default="best_mAP",
        help="what a cell's value is and how its best trial is chosen (default: best_mAP)",
    )
    parser.add_argument(
        "--reference", choices=("none", "paper"), default="none",
        help="paper: add the PositiveCoOp paper's Table 1 rows and a delta row per setup (COCO and VOC2007, ResNet101)",
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


def rerun_command(best: pd.Series, params: list[str], spec: str, spec_raw: dict | None, experiment_name: str) -> str:
    """`python -m orchestrator run SPEC --set ...` training one cell with its best searched values, as a new experiment.

    A new name keeps the original experiment intact (the same name with other settings would need
    --fresh); the search and the scheduler are switched off so that the one configuration trains fully.
    """
    cell_key = best["cell_key"]
    overrides = [
        f"name={experiment_name}-best-{cell_key}",
        f"setups=[{best['setup']}]",
        f"label_ratios=[{best['label_ratio']:g}]",
        f"seeds=[{best['seed']}]",
        "search={kind: grid}",
        "scheduler={kind: none}",
    ]
    for axis in ("synthetic_negation_rate", "synthetic_seed"):  # one point of a backbone axis
        if isinstance(((spec_raw or {}).get("backbone") or {}).get(axis), list):
            overrides.append(f"backbone.{axis}={best[f'params.backbone.{axis}']}")
    datasets = (spec_raw or {}).get("datasets") or []
    chosen = [dataset for dataset in datasets if isinstance(dataset, dict) and dataset.get("name") == best["dataset"]]
    if len(datasets) > 1 and chosen:
        overrides.append("datasets=" + yaml.safe_dump(chosen, default_flow_style=True, width=10**6).strip())
    overrides += [f"{param.removeprefix('params.')}={best[param]}" for param in params if isinstance(best[param], str)]
    command = ["python", "-m", "orchestrator", "run", spec]
    for override in overrides:
        command += ["--set", override]
    return shlex.join(command)


def best_configs(
    trials: pd.DataFrame, metric: str, spec: str, spec_raw: dict | None, experiment_name: str
) -> pd.DataFrame:
    """The best trial of every searched cell, its searched params and the command that reruns it."""
    from orchestrator.report.comparison_table import best_search_configs
    from orchestrator.report.reader import CELL, searched_params


    best = best_search_configs(trials, metric)
    if best.empty:
        return best
    params = searched_params(trials)
    commands = best.apply(lambda row: rerun_command(row, params, spec, spec_raw, experiment_name), axis=1)
    columns = [*CELL, metric, "trials_in_cell", "run_id", *params]
    return best[columns].assign(command=commands)


def describe_best(configs: pd.DataFrame, metric: str) -> str:
    from orchestrator.report.comparison_table import SETUP_LABELS, ratio_label

    params = [column for column in configs.columns if column.startswith("params.")]
    lines = [f"Best configuration per setup and searched cell (by {metric}):"]
    for _, row in configs.iterrows():
        # A param the setup does not have (the baseline's prompt learning rate) is NaN: left out.
        values = ", ".join(f"{param.removeprefix('params.')}={row[param]}" for param in params if isinstance(row[param], str))
        lines.append(
            f"  {SETUP_LABELS.get(row['setup'], row['setup'])} · {row['dataset']} ({row['backbone']}) · "
            f"{ratio_label(row['label_ratio'])} · seed {row['seed']}: {metric} {row[metric]:.2f}"
            f" (best of {row['trials_in_cell']} trials) with {values}"
        )
        lines.append(f"    {row['command']}")
    return "\n".join(lines)


def write_outputs(
    table: ComparisonTable, trials: pd.DataFrame, configs: pd.DataFrame, metric: str, title: str, out_dir: Path
) -> list[Path]:
    """Every table format under `out_dir/tables`, the plots under `out_dir/plots`."""
    from orchestrator.report import plots
    from orchestrator.report.comparison_text import render
    from orchestrator.report.render import write_formats

    written = write_formats(out_dir, "comparison", lambda fmt: render(table, fmt, title=title))
    if not configs.empty:
        configs.to_csv(out_dir / "tables" / "best_configs.csv", index=False)
        written.append(out_dir / "tables" / "best_configs.csv")
    written += plots.plot_map_vs_ratio(trials, metric, out_dir / "plots")
    written += plots.plot_search(trials, metric, out_dir / "plots")
    return written


def write_ood_outputs(table: pd.DataFrame, title: str, out_dir: Path) -> list[Path]:
    """The OOD table in every format under `out_dir/tables` (`ood_detection.*`)."""
    from orchestrator.report import ood_table
    from orchestrator.report.render import write_formats

    return write_formats(out_dir, "ood_detection", lambda fmt: ood_table.render(table, fmt, title))


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
    from orchestrator.report import negation_table, ood_table
    from orchestrator.report.comparison_table import build_table, load_reference
    from orchestrator.report.comparison_text import print_rich, render
    from orchestrator.report.experiment import (
        experiment_id,
        launch_run,
        open_store,
        resolve_target,
        spec_source,
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
    trials = all_trials
    ood_trials = ood_table.read_ood_trials(client, experiment)
    if not ood_trials.empty:
        ood_trials = ood_trials[ood_trials["run_id"].isin(all_trials["run_id"])]
    trials = trials[trials["family"] != "ood"]
    table = configs = ood = negation = None
    if not trials.empty:
        reference = load_reference() if args.reference == "paper" else None
        table = build_table(trials, args.metric, reference)
        spec, spec_raw = spec_source(client, target, launch)
        configs = best_configs(trials, args.metric, spec, spec_raw, target.experiment_name)
        if negation_table.applies(trials):
            negation = negation_table.comparisons(trials, args.metric)
    if not ood_trials.empty:
        ood = ood_table.build_ood_table(ood_trials, ood_table.load_reference() if args.reference == "paper" else None)
    title = f"{target.experiment_name}: {args.metric}"
    ood_title = f"{target.experiment_name}: OOD detection"
    negation_title = f"{target.experiment_name}: {args.metric} difference against the negation rate of pre-training"

    if args.format == "rich":
        if table is not None:
            print_rich(table, title)
            if not configs.empty:
                print(describe_best(configs, args.metric))
        if negation is not None and not negation.empty:
            print(negation_table.render(negation, "rich", negation_title), end="")
        if ood is not None:
            print(ood_table.render(ood, "rich", ood_title), end="")
    else:
        if table is not None:
            sys.stdout.write(render(table, args.format, title=title))
            if not configs.empty:  # stdout stays a clean document of the chosen format
                print(describe_best(configs, args.metric), file=sys.stderr)
        if negation is not None and not negation.empty:
            sys.stdout.write(negation_table.render(negation, args.format, negation_title))
        if ood is not None:
            sys.stdout.write(ood_table.render(ood, args.format, ood_title))

    failed = all_trials[all_trials["status"] == "FAILED"]
    if not failed.empty:  # the table shows their cells as missing or with fewer seeds (†); here is why
        print(f"{len(failed)} failed trial(s), not in the table:", file=sys.stderr)
        for row in failed.sort_values("run_name").itertuples():
            print(f"  {row.run_name}: {row.error or 'stopped or crashed before its first epoch'}", file=sys.stderr)

    if args.out is None and args.no_log:
        return 0
    with tempfile.TemporaryDirectory(prefix="orchestrator-table-") as scratch:
        out_dir = args.out if args.out is not None else Path(scratch)
        if table is not None:
            write_outputs(table, trials, configs, args.metric, title, out_dir)
        if negation is not None and not negation.empty:
            negation_table.write(negation, negation_title, out_dir)
        if ood is not None:
            write_ood_outputs(ood, ood_title, out_dir)
        if args.out is not None:
            print(f"Wrote tables to {out_dir / 'tables'} and plots to {out_dir / 'plots'}", file=sys.stderr)
        if not args.no_log:
            run_id = log_outputs(client, experiment, launch, out_dir)
            where = f"run {run_id} of MLflow experiment '{target.experiment_name}'"
            print(f"Logged tables/ and plots/ to {where}", file=sys.stderr)
    return 0
