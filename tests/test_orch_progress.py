"""The progress table: one line per trial change off a terminal, and the statuses of the last step."""

from __future__ import annotations

from types import SimpleNamespace

from orchestrator.run.progress import ProgressTable


def trial(trial_id: str, name: str, status: str, epoch: int | None = None, best: float | None = None):
    result = {} if epoch is None else {"epoch": epoch, "best_mAP": best}
    config = {"trial_name": name, "trial_config": {"training": {"epochs": 3}}}  # as before the OOD family: no "family"
    return SimpleNamespace(trial_id=trial_id, config=config, status=status, last_result=result)


def test_lines_on_change_and_final_table_with_last_step_statuses(capsys):
    progress = ProgressTable(interval_s=0.0)
    progress.setup()
    running = trial("a", "baseline-shapes-r0.5-s1", "RUNNING", 1, 12.345)
    pending = trial("b", "dual_coop-shapes-r0.5-s1", "PENDING")
    progress.on_step_end(1, [running, pending])
    progress.on_step_end(2, [running, pending])  # nothing changed: nothing printed
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "baseline-shapes-r0.5-s1  RUNNING  epoch 1/3  best mAP 12.35",
        "dual_coop-shapes-r0.5-s1  PENDING  epoch 0/3  best mAP -",
    ]
    # Ctrl-C: Tune marks the trials it stops TERMINATED before the experiment ends.
    running.status = pending.status = "TERMINATED"
    progress.on_experiment_end([running, pending])
    table = capsys.readouterr().out
    assert "2 trials: 1 running, 1 pending" in table
    assert "TERMINATED" not in table
