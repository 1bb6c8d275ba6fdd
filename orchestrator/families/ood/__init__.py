"""Out-of-distribution detection with LAPT (`trainables.ood`): the `ood:` section of a spec
(`section`), its cells and trial configs, its checks, what its runs log, and its table (`table`).

A spec runs LAPT when `setups` names `lapt`; the `ood` section then says on what (an ID set and OOD
sets), with which negative labels, training images and mixings, and which variants to compare
(the rows of the OOD table). Each variant is a cell of its own, keyed like an MLR cell by
(variant, ID set, label ratio, seed), with one trial.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from trainables import ood as ood_task
from trainables.errors import UserInputError
from trainables.ood.config import OODTrialConfig

from orchestrator.families.ood.section import LAPT_SETUP, UNTUNED, OODSpec, variant_config
from orchestrator.family import Family, register
from orchestrator.specs.grid import Cell, Trial, trial_key

FINAL_METRICS = ("best_auroc", "best_epoch", "trainable_params", "train_seconds", "num_negative_labels")
"""Logged by an OOD trial run when the trial ends; its per-epoch metrics (`auroc`, `auroc.near`,
`fpr95_ood_pos.<set>`, `id_accuracy`, ... in percent) keep the last epoch's values."""
UNLOGGED = ("epoch", "negative_labels", *FINAL_METRICS)
"""Keys of an OOD trial's result that are not per-epoch metrics."""


class OOD(Family):
    task = ood_task.TASK
    section = "ood"
    section_model = OODSpec

    def setups(self) -> list[str]:
        return [LAPT_SETUP]

    def problems(self, spec):
        if not self.setups_in(spec):
            return []
        problems = []
        if spec.section(self.section) is None:
            problems.append(("ood", f"setup '{LAPT_SETUP}' needs an ood section (id_dataset, ood_sets, ...)"))
        ood = spec.section(self.section)
        if ood is not None and spec.scheduler.kind == "asha" and spec.scheduler.grace_period > ood.training.epochs:
            problems.append(("scheduler.grace_period", f"{spec.scheduler.grace_period} is more than ood.training.epochs ({ood.training.epochs})"))
        axes = {"synthetic_negation_rate": spec.backbone.negation_rates, "synthetic_seed": spec.backbone.pretraining_seeds}
        for field, values in axes.items():
            if len(values) > 1:
                problems.append((f"backbone.{field}", f"a list is an axis of the MLR setups; run '{LAPT_SETUP}' in a spec of its own"))
        return problems

    def data_problems(self, spec):
        """The ID and OOD sets and the corpus, checked before any work starts (generated sets need nothing)."""
        from trainables.ood import data as ood_data
        from trainables.ood.negatives import corpus

        ood = spec.section(self.section)
        if not self.setups_in(spec) or ood is None:
            return []
        problems = []
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

    def cells(self, spec):
        """An untuned variant once, at ratio 1 and the first seed: it learns nothing that either changes
        (validation allows the family one backbone)."""
        ood = spec.section(self.section)
        if ood is None:
            return []
        backbone, cells = spec.backbone.configs()[0], []
        for variant in ood.variants:
            grid = [(1.0, spec.seeds[0])] if variant in UNTUNED else itertools.product(ood.label_ratios, spec.seeds)
            cells += [Cell(ood.id_dataset, variant, ratio, seed, backbone, family=self.name) for ratio, seed in grid]
        return cells

    def fixed_trials(self, spec, cell):
        config = variant_config(
            spec.section(self.section), cell.setup, cell.backbone, cell.label_ratio, cell.seed, spec.cache_dir, spec.data_dir,
            spec.resources.device,
        ).model_dump(mode="json")
        return [Trial(cell.key, cell.key, trial_key(cell.key, config), config, cell.setup, family=self.name)]

    def describe(self, loaded, cells):
        ood = loaded.spec.section(self.section)
        return {"cells": [
            f"OOD cells: {len(cells)}: LAPT variants {', '.join(ood.variants)} on '{ood.id_dataset.name}' "
            f"against {', '.join(f'{s.name} ({s.group})' for s in ood.ood_sets)}; "
            f"{ood.negatives.count} negative labels, {ood.training.epochs} epochs, 1 trial each",
        ]}  # fmt: skip

    def cache_entries(self, plan):
        """The image sets of the cells (CLIP's global embedding)."""
        from trainables.ood.data import image_sets

        from orchestrator.run.entries import Entry

        found = []
        for trials in plan.fixed_trials.values():
            for trial in trials:
                if trial.family == self.name:
                    config = OODTrialConfig.model_validate(trial.trial_config)
                    found += [Entry(self.name, s, config.backbone, split, encoding="global") for s, split in image_sets(config)]
        return found

    def epochs(self, spec):
        ood = spec.section(self.section)
        return None if ood is None else ood.training.epochs

    def open_cached_set(self, dataset, split, data_dir: Path):
        from trainables.ood.data import open_image_set

        return open_image_set(dataset, split, data_dir)

    def run_tags(self, config):
        return {"dataset": config.id_dataset.name, "label_ratio": f"{config.label_ratio:g}", "seed": str(config.seed)}

    def epoch_metrics(self, result):
        return {k: v for k, v in result.items() if k not in UNLOGGED and isinstance(v, (int, float))}

    def log_final(self, store, run_id, result):
        store.log(run_id, {k: result[k] for k in FINAL_METRICS}, step=int(result["epoch"]))
        labels = "\n".join(result["negative_labels"]) + "\n"
        store.log_file(run_id, "negative_labels.txt", lambda path: Path(path).write_text(labels))

    def tables(self, report):
        from orchestrator.families.ood import table as ood_table
        from orchestrator.report.aggregate import TablePart
        from orchestrator.report.render import write_formats

        trials = ood_table.ood_trials(report.trials_of(self.name))
        if trials.empty:
            return []
        table = ood_table.build_ood_table(trials, ood_table.load_reference() if report.reference == "paper" else None)
        title = f"{report.target.experiment_name}: OOD detection"
        return [TablePart.of_document(
            lambda fmt: ood_table.render(table, fmt, title),
            lambda out_dir: write_formats(out_dir, "ood_detection", lambda fmt: ood_table.render(table, fmt, title)),
        )]  # fmt: skip


register(OOD())
