"""glibc heap tuning: asyncio's 256 KiB read buffers come from the heap, not from mmap."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge.heap import tune_malloc

PROBE = """
import ctypes, json, sys
if sys.argv[1] == "tuned":
    from edge.heap import tune_malloc
    assert tune_malloc()
n = 300_000  # one socket read's buffer, above glibc's default 128 KiB mmap threshold
buf = bytearray(n)
addr = ctypes.addressof((ctypes.c_char * n).from_buffer(buf))
heap = [tuple(int(x, 16) for x in line.split()[0].split("-"))
        for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
print(json.dumps({"in_heap": any(lo <= addr < hi for lo, hi in heap)}))
"""


def in_heap(mode: str, env: dict[str, str] | None = None) -> bool:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          timeout=60, check=True, env=env)
    return bool(json.loads(done.stdout)["in_heap"])


def glibc() -> bool:
    import ctypes

    try:
        return hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not glibc(), reason="glibc only")
def test_large_buffers_come_from_the_heap_once_tuned() -> None:
    if in_heap("default"):
        pytest.skip("this glibc already serves 300 KB from the heap")
    assert in_heap("tuned")


def test_the_operators_malloc_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert tune_malloc() is False
