"""The trials a Ray trial stands for, as the callbacks see them: itself, or each member of a fused
group (`trainables.trainable.MEMBERS`), which looks like a Ray trial to them (`trial_id`, `config`,
`checkpoint`, `last_result`, `status`), so that every member has its own MLflow run and progress row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainables.tasks import MEMBER_ERRORS, MEMBERS


@dataclass
class Member:
    """One trial of a fused group's Ray trial."""

    group: Any
    """The group's Ray trial."""
    config: dict
    """The member's own Ray config, as it would have been unfused."""
    last_result: dict
    error: str | None = None
    """`Type: message` of the error it failed with, once it has."""
    traceback: str = ""
    """That error's traceback."""

    @property
    def trial_id(self) -> str:
        return f"{self.group.trial_id}/{self.config['trial_key']}"

    @property
    def checkpoint(self):
        return self.group.checkpoint

    @property
    def done(self) -> bool:
        """Whether it trained its last epoch."""
        return self.last_result.get("epoch", 0) >= epochs(self.config)

    @property
    def status(self) -> str:
        """Its own status once it failed or finished; the group's while it trains."""
        if self.error is not None:
            return "ERROR"
        return "TERMINATED" if self.done else self.group.status


def epochs(config: dict) -> int:
    """The epochs a trial of this Ray config runs: its config's `training.epochs`, as every family's config has it."""
    return config["trial_config"]["training"]["epochs"]


def is_group(trial) -> bool:
    return MEMBERS in trial.config


class Members:
    """Each member's last result and error, remembered across a group's results (a result holds only
    the members that trained that epoch); a new driver starts from the group's last result."""

    def __init__(self) -> None:
        self._results: dict[str, dict] = {}
        self._errors: dict[str, dict] = {}

    def of(self, trial) -> list:
        """The trials `trial` stands for: `[trial]`, or its members."""
        if not is_group(trial):
            return [trial]
        last = (trial.last_result or {}).get(MEMBERS, {})
        found = []
        for config in trial.config[MEMBERS]:
            member = Member(trial, config, last.get(config["trial_key"], {}))
            member.last_result = self._results.get(member.trial_id, member.last_result)
            failure = self._errors.get(member.trial_id, {})
            member.error, member.traceback = failure.get("error"), failure.get("traceback", "")
            found.append(member)
        return found

    def record(self, trial, result: dict) -> tuple[list, list]:
        """Take a group's result: (the members it holds an epoch of, with that epoch as their
        `last_result`; the members it says failed, with their `error`). An unfused trial's result: ([trial], [])."""
        if not is_group(trial):
            return [trial], []
        members = {member.config["trial_key"]: member for member in self.of(trial)}
        for key, epoch in result.get(MEMBERS, {}).items():
            epoch = {**epoch, "hostname": result.get("hostname")}  # Tune's, of the group's process
            members[key].last_result = self._results[members[key].trial_id] = epoch
        for key, failure in result.get(MEMBER_ERRORS, {}).items():
            self._errors[members[key].trial_id] = failure
            members[key].error, members[key].traceback = failure["error"], failure["traceback"]
        return [members[key] for key in result.get(MEMBERS, {})], [members[key] for key in result.get(MEMBER_ERRORS, {})]
