"""The negation testbed's reading: do negative prompts gain on a backbone that has seen "no X"?

An experiment whose trials ran on synthetic backbones pre-trained at several negation rates
(`backbone.synthetic_negation_rate: [0, 0.005, 0.05, 0.25]`, search_spaces/negation_testbed.yaml)
gets, from the `table` command, one more table and one more plot: NegativeCoOp - PositiveCoOp and
DualCoOp - PositiveCoOp mAP against the negation rate, per label ratio and over all ratios, each as
the mean over seeds of the paired difference, its 95% interval and the paired t-test
(`orchestrator.families.mlr.paired`); beside them the backbone's section 5.2 cosines (`trainables.mlr.negation`).

A cell's value is its best trial, as in the comparison table. The unit of the test is the seed, or,
when a rate has checkpoints of several pre-training seeds (`backbone.synthetic_seed: [0, 1, 2]`),
the checkpoint: a unit's differences are averaged over the rest (training seeds; for "All", the
label ratios too) first, so that n = checkpoints and the test asks whether an effect holds across
pre-training draws, not just across trainings on one checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from orchestrator.families.mlr import plots
from orchestrator.families.mlr.comparison_table import SETUP_LABELS, ratio_label
from orchestrator.families.mlr.paired import paired_difference
from orchestrator.families.mlr.schema import ABSENCE_METRICS
from orchestrator.report.reader import best_per_cell
from orchestrator.report.render import MISSING, render_marked, write_formats

RATE_PARAM = "params.backbone.synthetic_negation_rate"
SEED_PARAM = "params.backbone.synthetic_seed"
"""Absent from runs made before pre-training seeds were an axis: seed 0."""
COMPARISONS = (("negative_coop", "positive_coop"), ("dual_coop", "positive_coop"))
"""(a, b): the rows report a - b, both setups on the same backbone, ratio and seed."""
ALL = "All"
SIGNIFICANCE = 0.05
COSINE_LABELS = {"absence_cosine.not_a_photo": "cos(not a photo)", "absence_cosine.photo_without": "cos(photo without)"}
FILE_STEM = "negation"
CAPTION = (
    "mAP difference in points: mean over units [95% interval], p of the paired t-test across units, a unit being"
    " a seed, or a checkpoint where a rate has several (n: units); All: each unit's differences averaged over the"
    f" label ratios first; bold (*): p < {SIGNIFICANCE:g}."
    " cos: the backbone's section 5.2 cosine between 'a photo of a X' and its negation, mean over classes."
)


def negation_rates(trials: pd.DataFrame) -> list[float]:
    """The distinct negation rates of the finished trials (empty when no trial logged one)."""
    if RATE_PARAM not in trials:
        return []
    finished = trials[trials["status"] == "FINISHED"]
    return sorted(finished[RATE_PARAM].dropna().astype(float).unique())


def applies(trials: pd.DataFrame) -> bool:
    """Whether the experiment is a negation testbed: its trials ran at more than one negation rate."""
    return len(negation_rates(trials)) > 1


def comparisons(trials: pd.DataFrame, metric: str = "best_mAP") -> pd.DataFrame:
    """One row per (dataset, negation rate, comparison, label ratio or `All`): the paired difference
    (`mean`, `low`, `high`, `t`, `p_value`, `n`) and the backbone's cosines (`ABSENCE_METRICS`)."""
    cells = best_per_cell(trials, metric)
    seeds = cells[SEED_PARAM] if SEED_PARAM in cells else pd.Series(None, index=cells.index)
    cells = cells.assign(negation_rate=cells[RATE_PARAM].astype(float), pretraining_seed=seeds.fillna(0).astype(int))
    rows = []
    for (dataset, rate), block in cells.groupby(["dataset", "negation_rate"]):
        by_cell = block.pivot_table(index=["pretraining_seed", "label_ratio", "seed"], columns="setup", values=metric)
        checkpoints = block["pretraining_seed"].nunique()
        unit = "pretraining_seed" if checkpoints > 1 else "seed"
        # The section 5.2 cosines: a property of each checkpoint, averaged over the rate's checkpoints.
        cosines = {name: block.groupby("pretraining_seed")[name].first().mean() for name in ABSENCE_METRICS}
        for a, b in COMPARISONS:
            if a not in by_cell or b not in by_cell:
                continue
            pairs = by_cell[[a, b]].dropna()
            per_ratio = [(ratio, group.groupby(level=unit).mean()) for ratio, group in pairs.groupby(level="label_ratio")]
            per_ratio.append((ALL, pairs.groupby(level=unit).mean()))
            for ratio, paired in per_ratio:
                result = paired_difference(paired[a].to_numpy(), paired[b].to_numpy())
                rows.append({"dataset": dataset, "negation_rate": rate, "checkpoints": checkpoints,
                             "a": a, "b": b, "label_ratio": ratio, **dataclasses.asdict(result), **cosines})  # fmt: skip
    return pd.DataFrame(rows)


def comparison_label(a: str, b: str) -> str:
    return f"{SETUP_LABELS.get(a, a)} − {SETUP_LABELS.get(b, b)}"


def _cell(row: pd.Series) -> str:
    if np.isnan(row["low"]):
        return f"{row['mean']:+.1f} (n={row['n']})"
    p = "" if np.isnan(row["p_value"]) else " p<0.001" if row["p_value"] < 0.001 else f" p={row['p_value']:.3f}"
    return f"{row['mean']:+.1f} [{row['low']:+.1f}, {row['high']:+.1f}]{p}"


def display(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(strings: a row per dataset, rate and comparison, a column per ratio, All and the cosines;
    the cells whose paired test is significant)."""
    ratios = sorted(r for r in rows["label_ratio"].unique() if r != ALL)
    tested = [*(ratio_label(r) for r in ratios), ALL]
    columns = [*tested, "n", *COSINE_LABELS.values()]
    shown, marked, index = [], [], []
    for (dataset, rate, a, b), group in rows.groupby(["dataset", "negation_rate", "a", "b"], sort=False):
        by_ratio = {ratio_label(r) if r != ALL else ALL: row for r, row in zip(group["label_ratio"], group.to_dict("records"))}
        first = group.iloc[0]
        units = f"{by_ratio[ALL]['n']} {'checkpoints' if first['checkpoints'] > 1 else 'seeds'}" if ALL in by_ratio else MISSING
        shown.append([*(_cell(pd.Series(by_ratio[c])) if c in by_ratio else MISSING for c in tested), units,
                      *(f"{first[name]:.3f}" for name in COSINE_LABELS)])  # fmt: skip
        marked.append([bool(c in by_ratio and by_ratio[c]["p_value"] < SIGNIFICANCE) for c in tested]
                      + [False] * (1 + len(COSINE_LABELS)))  # fmt: skip
        index.append((dataset, f"{rate:g}", comparison_label(a, b)))
    names = pd.MultiIndex.from_tuples(index, names=["Dataset", "Negation rate", "Comparison"])
    return pd.DataFrame(shown, index=names, columns=columns), pd.DataFrame(marked, index=names, columns=columns)


def render(rows: pd.DataFrame, fmt: str, title: str) -> str:
    """The testbed table in one of `FORMATS`; CSV is the long numeric frame of `comparisons`."""
    if fmt == "csv":
        return rows.to_csv(index=False)
    shown, marked = display(rows)
    return render_marked(shown, marked, fmt, title, CAPTION)


def figure(rows: pd.DataFrame) -> Figure:
    """Per dataset: the mean differences (All, with their 95% intervals; per ratio, faint) against
    the negation rate, and the section 5.2 cosines against it. The rate axis is symmetric-log, so
    that rate 0 and rates a decade apart are all visible."""
    datasets = list(dict.fromkeys(rows["dataset"]))
    colors = plots.setup_colors([a for a, _ in COMPARISONS])
    with matplotlib.rc_context(plots.FONT):
        fig, axes = plots.panel_grid(2 * len(datasets), columns=2, width=4.6, height=3.4)
        for number, dataset in enumerate(datasets):
            here = rows[rows["dataset"] == dataset]
            differences, cosines = axes[2 * number], axes[2 * number + 1]
            for (a, b), pair in here.groupby(["a", "b"], sort=False):
                pooled = pair[pair["label_ratio"] == ALL]
                error = np.vstack([pooled["mean"] - pooled["low"], pooled["high"] - pooled["mean"]])
                differences.errorbar(pooled["negation_rate"], pooled["mean"], yerr=np.nan_to_num(error), marker="o",
                                     capsize=3, color=colors[a], label=f"{comparison_label(a, b)} (all ratios, 95% CI)")  # fmt: skip
                for _, ratio in pair[pair["label_ratio"] != ALL].groupby("label_ratio"):
                    differences.plot(ratio["negation_rate"], ratio["mean"], color=colors[a], alpha=0.3, linewidth=0.8)
            differences.axhline(0, color="black", linewidth=0.8)
            differences.set_title(f"{dataset}: mAP difference (faint: per label ratio)")
            differences.set_ylabel("mAP difference (points)")
            per_rate = here.drop_duplicates("negation_rate")
            for name, label in COSINE_LABELS.items():
                cosines.plot(per_rate["negation_rate"], per_rate[name], marker="o", label=label)
            cosines.set_title(f"{dataset}: section 5.2 cosine")
            cosines.set_ylabel("cosine to 'a photo of a X'")
            cosines.legend()
            rates = sorted(rows["negation_rate"].unique())
            smallest = min((r for r in rates if r > 0), default=1.0)
            for axis in (differences, cosines):
                axis.set_xscale("symlog", linthresh=smallest)
                axis.set_xlim(-0.3 * smallest, 1.5 * rates[-1])  # no empty negative half; the last point inside
                axis.set_xticks(rates, [f"{r:g}" for r in rates])
                axis.set_xlabel("negation rate of the pre-training captions")
                axis.grid(alpha=0.3)
        handles, labels = plots.unique_legend(axes[::2])
        fig.legend(handles, labels, loc="outside lower center")
    return fig


def write(rows: pd.DataFrame, title: str, out_dir: Path) -> list[Path]:
    """The table in every format under `out_dir/tables` (`negation.*`), the plot under `out_dir/plots`."""
    written = write_formats(out_dir, FILE_STEM, lambda fmt: render(rows, fmt, title))
    return written + plots.save_figure(figure(rows), out_dir / "plots", f"{FILE_STEM}_vs_rate")
