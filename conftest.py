"""Fixtures shared by both test trees (tests/ and hil_tests/)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from citygate.rig import Broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A private Mosquitto on a free port, stopped after the test."""
    b = Broker(tmp_path / "broker").start()
    try:
        yield b
    finally:
        b.stop()
