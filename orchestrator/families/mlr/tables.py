"""The MLR family's tables: the comparison of the setups (like Table 1 of the PositiveCoOp paper)
with the best configuration of every searched cell and the command that reruns it, its plots, and
the comparison against the negation rate of pre-training when the spec varies it."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from orchestrator.families.mlr.schema import RANKING_METRICS
from orchestrator.report.aggregate import TableInput, TablePart

if TYPE_CHECKING:
    import pandas as pd

    from orchestrator.families.mlr.comparison_table import ComparisonTable


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
    from orchestrator.families.mlr.comparison_table import best_search_configs
    from orchestrator.report.reader import CELL, searched_params


    best = best_search_configs(trials, metric)
    if best.empty:
        return best
    params = searched_params(trials)
    commands = best.apply(lambda row: rerun_command(row, params, spec, spec_raw, experiment_name), axis=1)
    columns = [*CELL, metric, "trials_in_cell", "run_id", *params]
    return best[columns].assign(command=commands)


def describe_best(configs: pd.DataFrame, metric: str) -> str:
    from orchestrator.families.mlr.comparison_table import SETUP_LABELS, ratio_label

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
    from orchestrator.families.mlr import plots
    from orchestrator.families.mlr.comparison_text import render
    from orchestrator.report.render import write_formats

    written = write_formats(out_dir, "comparison", lambda fmt: render(table, fmt, title=title))
    if not configs.empty:
        configs.to_csv(out_dir / "tables" / "best_configs.csv", index=False)
        written.append(out_dir / "tables" / "best_configs.csv")
    written += plots.plot_map_vs_ratio(trials, metric, out_dir / "plots")
    written += plots.plot_search(trials, metric, out_dir / "plots")
    return written


def tables(report: TableInput, trials: pd.DataFrame) -> list[TablePart]:
    from orchestrator.families.mlr import negation_table
    from orchestrator.families.mlr.comparison_table import build_table, load_reference
    from orchestrator.families.mlr.comparison_text import print_rich, render
    from orchestrator.report.experiment import spec_source

    if trials.empty:
        return []
    metric, name = report.metric or RANKING_METRICS[0], report.target.experiment_name
    table = build_table(trials, metric, load_reference() if report.reference == "paper" else None)
    spec, spec_raw = spec_source(report.client, report.target, report.launch)
    configs = best_configs(trials, metric, spec, spec_raw, name)
    title = f"{name}: {metric}"

    def show(fmt: str) -> None:
        if fmt == "rich":
            print_rich(table, title)
        else:
            sys.stdout.write(render(table, fmt, title=title))
        if not configs.empty:  # beside a document of another format, stdout stays that document alone
            print(describe_best(configs, metric), file=sys.stdout if fmt == "rich" else sys.stderr)

    parts = [TablePart(show, lambda out_dir: write_outputs(table, trials, configs, metric, title, out_dir))]
    negation = negation_table.comparisons(trials, metric) if negation_table.applies(trials) else None
    if negation is not None and not negation.empty:
        negation_title = f"{name}: {metric} difference against the negation rate of pre-training"
        parts.append(TablePart.of_document(
            lambda fmt: negation_table.render(negation, fmt, negation_title),
            lambda out_dir: negation_table.write(negation, negation_title, out_dir),
        ))  # fmt: skip
    return parts
