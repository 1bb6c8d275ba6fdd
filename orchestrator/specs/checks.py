"""The rules across a spec's fields, all checked before any work starts: `semantic_problems(spec)`.

Each problem is `(dotted.field, message)`; `orchestrator.specs.load` reports them all at once. The
rules of a task family's own fields are the family's (`orchestrator.family`); with `check_data`,
each family looks at its data too.
"""

from __future__ import annotations

from trainables.errors import UserInputError

from orchestrator.family import in_spec, registered
from orchestrator.specs.models import ExperimentSpec


def semantic_problems(spec: ExperimentSpec, check_data: bool = True) -> list[tuple[str, str]]:
    """Cross-field rules, all of them: `(dotted.field, message)` per problem."""
    problems: list[tuple[str, str]] = []
    for family in registered():
        problems += family.problems(spec)
    problems += _backbone_problems(spec)
    problems += _search_metric_problems(spec)
    for field in ("data_dir", "cache_dir"):
        # `--fresh` deletes the experiment folder; it must not hold data shared with other specs.
        if getattr(spec, field).is_relative_to(spec.state_dir):
            inside = f"{getattr(spec, field)} lies inside this spec's folder {spec.state_dir}"
            problems.append((field, inside))
    if check_data:
        for family in registered():
            problems += family.data_problems(spec)
    return problems


def _backbone_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    from trainables.backbone.runtime import check_model
    from trainables.backbone.weights import SYNTHETIC_WEIGHTS

    problems = []
    try:
        check_model(spec.backbone.model, spec.backbone.image_size)
    except UserInputError as error:
        problems.append(("backbone", str(error)))
    synthetic = {"synthetic_negation_rate": spec.backbone.negation_rates, "synthetic_seed": spec.backbone.pretraining_seeds}
    for field, values in synthetic.items():
        if spec.backbone.pretrained != SYNTHETIC_WEIGHTS and values != [0]:
            problems.append((f"backbone.{field}", f"only `pretrained: {SYNTHETIC_WEIGHTS}` weights are pre-trained here"))
    return problems


def _search_metric_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """An Optuna study is told a metric the trials report: a family's best epoch's or last epoch's."""
    if spec.search.kind != "optuna":
        return []
    reported = [name for family in in_spec(spec) for name in (f"best_{family.task.metric}", family.task.metric)]
    if spec.search.metric in reported:
        return []
    return [("search.metric", f"'{spec.search.metric}' is not a metric the trials report: use one of {', '.join(reported)}")]
