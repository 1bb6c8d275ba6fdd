"""The rules across a spec's fields, all checked before any work starts: `semantic_problems(spec)`.

Each problem is `(dotted.field, message)`; `orchestrator.specs.load` reports them all at once. With
`check_data`, the datasets' files and the OOD family's data are looked at too.
"""

from __future__ import annotations

from pydantic import ValidationError

from trainables.config import LossConfig
from trainables.errors import UserInputError

from orchestrator.specs.models import ExperimentSpec
from orchestrator.specs.ood import LAPT_SETUP
from orchestrator.specs.sections import _ALL_GROUPS


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

