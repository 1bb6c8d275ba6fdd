"""Multi-label recognition with partial labels (PositiveCoOp, NegativeCoOp, DualCoOp, the Baseline):
the family whose fields are the spec's own (`datasets`, `label_ratios`, `loss`, `search`, ...).

Its cells are (dataset x backbone x setup x label ratio x seed) with a loss grid's or Optuna's
trials each (`.trials`); its rules are `.checks`; `describe` counts its parameters and memory
(`.describe`); its tables are the paper's comparison and the negation comparison (`.tables`).
"""

from __future__ import annotations

import functools
import itertools

import pandas as pd

from trainables import mlr as mlr_task

from orchestrator.families.mlr import checks, trials
from orchestrator.families.mlr.schema import EPOCH_METRICS, FINAL_METRICS, LAST_MAP, RANKING_METRICS
from orchestrator.families.mlr.sections import LossSpec, TrainingSpec
from orchestrator.family import Family, register


@functools.lru_cache(maxsize=4)
def _train_set(dataset_json: str, data_dir: str):
    """A dataset's train split, built once per process for the partial-label masks of its cells."""
    from pathlib import Path

    from trainables import data
    from trainables.config import DatasetConfig

    return data.build_dataset(DatasetConfig.model_validate_json(dataset_json), "train", Path(data_dir))


class MLR(Family):
    task = mlr_task.TASK
    default_sections = {"loss": LossSpec, "training": TrainingSpec}

    def setups(self) -> list[str]:
        from trainables.mlr import setups

        return setups.names()

    def problems(self, spec):
        mine = self.setups_in(spec)
        return [*checks.search_problems(spec, mine), *checks.setup_problems(spec, mine), *checks.needs(spec, mine)]

    def data_problems(self, spec):
        return checks.dataset_problems(spec)

    def cells(self, spec):
        return trials.cells(spec, self.setups_in(spec))

    def trials_per_cell(self, spec):
        return trials.trials_per_cell(spec)

    def fixed_trials(self, spec, cell):
        return trials.grid_trials(spec, cell) if spec.search.kind == "grid" else None

    def search_space(self, spec, setup):
        return trials.search_space(spec, setup)

    def sampled_trial(self, spec, cell, sampled, number, study):
        return trials.make_trial(spec, cell, spec.loss.fixed(), number, sampled, study)

    def search_key(self, spec, cell):
        return trials.search_key(spec, cell)

    def describe(self, loaded, cells):
        from orchestrator.families.mlr.describe import lines

        return lines(loaded, self.setups_in(loaded.spec), cells)

    def cache_entries(self, plan):
        from trainables.features.encoding import fill_views

        from orchestrator.run.entries import Entry

        spec = plan.spec
        return [
            Entry(self.name, dataset, backbone, split, view)
            for dataset, backbone in itertools.product(spec.datasets, spec.backbone.configs())
            for split, view in fill_views(spec.features)
        ]

    def decoded_sets(self, plan):
        features = plan.spec.features
        if features.mode != "online" or not features.decoded_store:
            return []
        sizes = sorted({backbone.image_size for backbone in plan.spec.backbone.configs()})
        return [(dataset, "train", size) for dataset in plan.spec.datasets for size in sizes]

    def stream_key(self, config):
        from trainables.mlr.stream import stream_key

        return stream_key(config)

    def member_bytes(self, spec):
        from orchestrator.families.mlr.describe import measure

        measured = measure(spec, self.setups_in(spec))
        return measured.backbone_bytes, measured.member_bytes, measured.measured_on

    def group_seconds(self, spec, profile, trials):
        from orchestrator.families.mlr.cost import group_seconds

        return group_seconds(spec, profile, [self.task.config.model_validate(trial.trial_config) for trial in trials])

    def profile_notes(self, spec, profile):
        from orchestrator.families.mlr.cost import profile_notes

        return profile_notes(spec, profile)

    def open_cached_set(self, dataset, split, data_dir):
        from trainables import data

        data.check(dataset, data_dir)
        return data.build_dataset(dataset, split, data_dir)

    def heaviest_trial(self, plan):
        """The trial of the costliest cell: its setup with the most trainable parameters (DualCoOp's two
        prompts before one prompt), on its largest dataset, at its first ratio and seed."""
        from trainables import data
        from trainables.backbone import load_clip
        from trainables.mlr import setups

        spec = plan.spec
        cells = [cell for cell in plan.cells if cell.family == self.name]
        if not cells:
            return None
        sizes = {d.name: len(data.build_dataset(d, "train", spec.data_dir)) for d in spec.datasets}
        largest = max(spec.datasets, key=lambda d: sizes[d.name])
        backbone = load_clip(spec.backbone.model, None, spec.backbone.image_size)  # random weights: only the count matters
        names = data.classnames(largest, spec.data_dir)
        cost = {name: setups.count_trainable(setups.build(name, names, backbone, **spec.setup_options.get(name, {})))
                for name in self.setups_in(spec)}  # fmt: skip
        cell = max(cells, key=lambda c: (cost[c.setup], sizes[c.dataset.name]))
        return trials.resolve(spec, cell, spec.loss.fixed(), {name: r.low for name, r in trials.search_space(spec, cell.setup).items()})

    def epochs(self, spec):
        return spec.training.epochs

    def encode_batch_size(self, spec):
        return spec.training.eval_batch_size

    def settings_lines(self, spec, device):
        from trainables.backbone import precision

        return [precision.resolve(spec.training.precision, device)[1].capitalize()]

    def training_steps(self, config):
        from trainables.mlr.train import MLRTrial

        trial = MLRTrial(config)
        return trial.device, trial.steps()

    def trial_label(self, config):
        return (f"{config.setup} trials on {config.dataset.name} ({config.backbone.model} at {config.backbone.image_size} px, "
                f"batch {config.training.batch_size})")  # fmt: skip

    def ranking_metrics(self):
        return RANKING_METRICS

    def final_metrics(self):
        return FINAL_METRICS

    def log_cell(self, store, run_id, config):
        """The cell's partial-label mask, as every trial of the cell draws it (cheap, deterministic)."""
        from trainables import data

        train = _train_set(config.dataset.model_dump_json(), str(config.data_dir))
        mask = data.dataset_partial_labels(train, config.label_ratio, config.seed)
        store.log_file(
            run_id,
            "partial_labels.npz",
            lambda path: data.save_partial_labels(
                path, mask, train.labels, ratio=config.label_ratio, seed=config.seed, key=data.dataset_key(train)
            ),
        )
        store.log(run_id, {"kept_fraction": data.kept_fraction(mask, train.labels)})

    def epoch_metrics(self, result):
        return {k: v for k, v in result.items() if k in EPOCH_METRICS or k.startswith("lr_")}

    def log_final(self, store, run_id, result):
        final = {k: result[k] for k in FINAL_METRICS if k != LAST_MAP}
        final[LAST_MAP] = result["mAP"]
        store.log(run_id, final, step=int(result["epoch"]))
        per_class = pd.DataFrame({"class": result["classnames"], "ap": result["best_per_class_ap"]})
        store.log_file(run_id, "per_class_ap.csv", lambda path: per_class.to_csv(path, index=False))

    def tables(self, report):
        from orchestrator.families.mlr.tables import tables

        return tables(report, report.trials_of(self.name))


register(MLR())
