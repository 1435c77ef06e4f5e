"""A real small file system (tmpfs) for tests of a full disk, and a writer that fills it."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(where: Path, size: str = "4m") -> Iterator[Path]:
    """Mount a tmpfs of `size` at `where` (root only: the test is skipped otherwise)."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(disk: Path, name: str = "filler.bin", chunk: int = 4096) -> Path:
    """Write a file on `disk` until the file system refuses (ENOSPC); return its path."""
    path = disk / name
    block = b"\xa5" * chunk
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if chunk == 1:
                    assert path.stat().st_size > 0, f"{disk} was full already: nothing to fill"
                    return path
                chunk //= 2
                block = block[:chunk]
    finally:
        os.close(fd)


def free_bytes(disk: Path) -> int:
    """Bytes free on the file system holding `disk`."""
    st = os.statvfs(disk)
    return st.f_bavail * st.f_frsize
