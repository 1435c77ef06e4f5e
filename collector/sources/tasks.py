"""An owner task's lifecycle as a pure function: pushed → acknowledged → reported → closed.

A task closes when its owner has reported the action taken **and** the reading recovered
(`closed_reason` "recovered"), or when an inspector verifies it on site ("verified"). A report
may come before or after the recovery; either order closes it once both hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

State = Literal["pushed", "acknowledged", "reported", "closed"]
Action = Literal["ack", "report", "recovered", "verify"]
STATES: tuple[State, ...] = ("pushed", "acknowledged", "reported", "closed")
# How the incidents' escalation conditions read a task's state (collector.alarms.policy).
AS_INCIDENT: dict[str, str] = {"pushed": "open", "acknowledged": "acknowledged",
                               "reported": "on_site", "closed": "closed"}


class TaskError(ValueError):
    """An action the task's state does not allow; `status` is the HTTP answer."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Transition:
    """The state after an action, and why it closed (empty unless closed now)."""

    state: State
    closed_reason: str = ""


def step(state: State, action: Action, *, recovered: bool) -> Transition:
    """Apply one action; `recovered` says whether the exceedance's reading has recovered."""
    if state == "closed":
        if action in ("ack", "recovered"):
            return Transition("closed")  # late acknowledgements and recoveries are harmless
        raise TaskError(f"the task is closed; it cannot take {action!r}")
    if action == "ack":
        return Transition("acknowledged" if state == "pushed" else state)
    if action == "report":
        return Transition("closed", "recovered") if recovered else Transition("reported")
    if action == "recovered":
        return Transition("closed", "recovered") if state == "reported" else Transition(state)
    return Transition("closed", "verified")
