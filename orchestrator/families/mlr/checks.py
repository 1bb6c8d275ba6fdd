"""The MLR family's rules across the spec's fields: the datasets and ratios its setups need, the
search (grid axes, Optuna ranges) over the loss settings and learning rates, the setups' options and
learning-rate groups, and the datasets' files."""

from __future__ import annotations

from pydantic import ValidationError

from trainables.errors import UserInputError
from trainables.mlr.config import LossConfig

from orchestrator.families.mlr import trials
from orchestrator.families.mlr.sections import ALL_GROUPS
from orchestrator.specs import ExperimentSpec


def needs(spec: ExperimentSpec, setups: list[str]) -> list[tuple[str, str]]:
    """The MLR setups have what they run on."""
    problems = []
    if setups and not spec.datasets:
        problems.append(("datasets", f"setups {setups} need at least one multi-label dataset"))
    if setups and not spec.label_ratios:
        problems.append(("label_ratios", f"setups {setups} need at least one label ratio"))
    return problems


def search_problems(spec: ExperimentSpec, running: list[str]) -> list[tuple[str, str]]:
    """Grid axes, search ranges and the search kind agree (loss settings and learning rates)."""
    problems = []
    axes, ranges = spec.loss.axes(), spec.loss.ranges()
    lr_ranges = spec.training.lr_ranges()
    if spec.search.kind == "optuna":
        for field in axes:
            problems.append((f"loss.{field}", "a list is a grid axis; with search.kind optuna give a range {low, high}"))
        if not any(trials.search_space(spec, setup) for setup in running):
            problems.append(
                ("search.kind", "optuna needs at least one loss setting or training.lr group given as a range {low, high}")
            )
    else:
        for field in ranges:
            problems.append((f"loss.{field}", "a range {low, high} needs search.kind optuna; give a number or a list"))
        for group in lr_ranges:
            problems.append((f"training.lr.{group}", "a range {low, high} needs search.kind optuna; give a number"))
    if running and spec.scheduler.kind == "asha" and spec.scheduler.grace_period > spec.training.epochs:
        problems.append(
            ("scheduler.grace_period", f"{spec.scheduler.grace_period} is more than training.epochs ({spec.training.epochs})")
        )
    # Range ends must themselves be valid loss values (gamma >= 0, 0 <= clip < 1, ...).
    for field, interval in ranges.items():
        for end in ("low", "high"):
            try:
                LossConfig(**{field: getattr(interval, end)})
            except ValidationError as error:
                problems.append((f"loss.{field}.{end}", error.errors()[0]["msg"]))
    return problems


def setup_problems(spec: ExperimentSpec, running: list[str]) -> list[tuple[str, str]]:
    """Check each setup's options by building it on a tiny stand-in backbone, and its learning rates.

    Building is the one authority on options, and on a 32-pixel random `ViT-tiny` it takes
    milliseconds; options do not depend on the real backbone. Groups are the setup's `lr_groups`.
    `setup_options` and `lr_per_setup` may name any known setup, also one the spec does not run
    (so `--set setups=[baseline]` narrows a spec without editing it); a name no setup has is an error.
    """
    from trainables.backbone import load_clip
    from trainables.mlr import setups

    problems = []
    configured = {"setup_options": spec.setup_options, "lr_per_setup": spec.lr_per_setup}
    for field, per_setup in configured.items():
        for name in per_setup:
            if name not in setups.names():
                problems.append((f"{field}.{name}", f"unknown setup '{name}'; known: {sorted(setups.names())}"))
    probe = load_clip("ViT-tiny", None, image_size=32)
    for name in set(running) | set(spec.setup_options):
        if name not in setups.names():
            continue
        try:
            setups.build(name, ["cat", "dog"], probe, **spec.setup_options.get(name, {}))
        except UserInputError as error:
            problems.append((f"setup_options.{name}", str(error)))
    known = {group for name in setups.names() for group in setups.lr_groups(name)}
    unknown = sorted(set(spec.training.lr) - (ALL_GROUPS | known))
    if unknown:
        problems.append(("training.lr", f"unknown parameter group(s) {unknown}; groups: {sorted(ALL_GROUPS)}"))
    for name in running:
        missing = sorted(set(setups.lr_groups(name)) - set(spec.training.lr) - set(spec.lr_per_setup.get(name, {})))
        if missing:
            problems.append(("training.lr", f"setup '{name}' needs a learning rate for group(s) {missing}"))
    for name, rates in spec.lr_per_setup.items():
        if name in setups.names() and set(rates) - set(setups.lr_groups(name)):
            extra, own = sorted(set(rates) - set(setups.lr_groups(name))), list(setups.lr_groups(name))
            problems.append((f"lr_per_setup.{name}", f"setup '{name}' has no parameter group(s) {extra}; its groups: {own}"))
    return problems


def dataset_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    from trainables import data

    problems = []
    for index, dataset in enumerate(spec.datasets):
        try:
            data.check(dataset, spec.data_dir)
        except UserInputError as error:
            problems.append((f"datasets.{index}", str(error)))
    return problems

