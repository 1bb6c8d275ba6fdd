"""The MLR family's metric names in MLflow, shared by what logs them (`orchestrator.families.mlr`)
and what reads them (its tables). The run tree and what each run holds are described in
docs/ARCHITECTURE.md ("Per-trial metrics")."""

EPOCH_METRICS = ("train_loss", "mAP")
"""Logged by every trial run at every epoch (step = epoch), with every `lr_<group>`."""
LAST_MAP = "last_mAP"
"""The last epoch's mAP, logged as a final metric."""
ABSENCE_METRICS = ("absence_cosine.not_a_photo", "absence_cosine.photo_without")
"""The backbone's section 5.2 measurement (`trainables.mlr.negation`) on the trial's class names."""
FINAL_METRICS = (
    "best_mAP", LAST_MAP, "best_epoch", "trainable_params", "train_seconds", "gpu_seconds", "kept_fraction",
    *ABSENCE_METRICS,
)  # fmt: skip
"""Logged by a trial run when the trial ends (mAP in percent)."""
RANKING_METRICS = ("best_mAP", LAST_MAP)
"""The final metrics a trial can be judged by: which trial is a cell's best, and a table cell's value."""
