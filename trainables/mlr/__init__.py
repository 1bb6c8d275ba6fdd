"""Multi-label recognition with partial labels: the PositiveCoOp paper's four setups (Baseline,
PositiveCoOp, NegativeCoOp, DualCoOp) trained with the asymmetric loss and judged by mAP.

`config` (the trial config), `setups` (the registry of the four), `losses` (ASL), `metrics` (mAP),
`stream` (what the trials of one stream share), `train` (the trial and its loop), `fused` (the trials
of one stream trained together), `memory` (a trial's peak tensor memory, for `describe`), `negation`
(the section 5.2 measurement). `TASK` is the family as a Ray worker runs it.
"""

from trainables.lifecycle import TaskFamily
from trainables.mlr.config import TrialConfig
from trainables.mlr.fused import run_group
from trainables.mlr.train import MLRTrial, run_epochs

TASK = TaskFamily("mlr", TrialConfig, run_epochs, MLRTrial.metric, run_group=run_group)
