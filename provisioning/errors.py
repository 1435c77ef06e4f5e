"""The provisioning tool's one error type: what went wrong, in plain words, and what to do."""

from __future__ import annotations


class ProvisionError(Exception):
    """A failure a technician can act on; `hint` says what to try."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  → {self.hint}" if self.hint else self.message
