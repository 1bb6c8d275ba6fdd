"""OOD detection with prompt tuning (LAPT) and its untuned baselines (NegLabel, zero-shot MSP),
judged by AUROC and FPR95 over OOD sets; no Ray, no MLflow.

`config` (the trial config), `data` (ID sets, OOD sets and pools), `negatives` (mined negative
labels), `lapt` (the prompts and hand-crafted label features), `collect` (training images per
label), `losses` (the mixing losses), `score` and `metrics` (the OOD scores and their metrics),
`train` (the trial and its loop). `TASK` is the family as a Ray worker runs it.
"""

from trainables.lifecycle import TaskFamily
from trainables.ood.config import OODTrialConfig
from trainables.ood.train import OODTrial, run_ood_epochs

TASK = TaskFamily("ood", OODTrialConfig, run_ood_epochs, OODTrial.metric)
