"""The experiment spec: its schema, reading it, its cross-field checks, and the grid it expands to.

`load_spec(file, overrides)` gives a validated `ExperimentSpec` or one `SpecError` listing every
problem; `orchestrator.specs.grid` expands a spec into cells and trials. Tune's saved experiments
pickle the spec's models, so they stay importable from here (and, for those that moved to their
family, `orchestrator.compat.MOVED_CLASSES`).
"""

from orchestrator.specs.load import (
    SEARCH_SPACES_DIR,
    LoadedSpec,
    SpecError,
    apply_override,
    load_spec,
    read_yaml,
    resolve_spec_path,
)
from orchestrator.specs.models import RESULT_FIELDS, ExperimentSpec, spec_hash
from orchestrator.specs.paths import (
    is_uri,
    require_existing_store,
    resolve_tracking_uri,
    without_paths,
)
from orchestrator.specs.sections import (
    AshaScheduler,
    BackboneSpec,
    GridSearch,
    NoScheduler,
    OptunaSearch,
    Resources,
    SearchRange,
)

__all__ = [
    "SEARCH_SPACES_DIR", "RESULT_FIELDS", "AshaScheduler", "BackboneSpec", "ExperimentSpec", "GridSearch", "LoadedSpec",
    "NoScheduler", "OptunaSearch", "Resources", "SearchRange", "SpecError", "apply_override",
    "is_uri", "load_spec", "read_yaml", "require_existing_store", "resolve_spec_path", "resolve_tracking_uri", "spec_hash",
    "without_paths",
]  # fmt: skip
