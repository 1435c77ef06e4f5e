"""Children die with their parent: a watchdog that stops the rig's processes when it dies.

`PR_SET_PDEATHSIG` is not enough: the kernel clears it when a child changes credentials
(mosquitto started as root switches to its `user`), and it fires when the *thread* that forked
the child exits, not the process. So the parent hands each child's pid to this watchdog over a
pipe; when the pipe closes — the parent exited, however it died, SIGKILL included — the watchdog
stops every child still running (its whole process group when it leads one): SIGTERM, then
SIGKILL after a grace period. A pid is identified with its start time, so a pid the kernel has
reused since is never signalled.

Run as `python -m citygate.reaper`; `Reaper` is the parent's side.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import IO

GRACE_S = 5.0


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (None: gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def stop_all(children: dict[int, str], grace: float = GRACE_S) -> None:
    """SIGTERM each child that is still the same process, then SIGKILL what is left."""
    alive = {pid for pid, started in children.items() if start_time(pid) == started}
    for pid in alive:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = {pid for pid in alive if start_time(pid) == children[pid]}
    for pid in alive:
        _signal(pid, signal.SIGKILL)


def main() -> int:
    """Read child pids from stdin until it closes, then stop those still running."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is the parent's
    children: dict[int, str] = {}
    for line in sys.stdin:
        with contextlib.suppress(ValueError):
            pid = int(line)
            started = start_time(pid)
            if started is not None:
                children[pid] = started
    stop_all(children)
    return 0


class Reaper:
    """The parent's side: start the watchdog, tell it about each child."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Reaper:
        """Start the watchdog in a session of its own."""
        self._proc = subprocess.Popen([sys.executable, "-m", "citygate.reaper"],
                                      stdin=subprocess.PIPE, start_new_session=True)
        return self

    def watch(self, pid: int) -> None:
        """Stop this child when the parent dies."""
        pipe: IO[bytes] | None = self._proc.stdin if self._proc else None
        if pipe is not None:
            with contextlib.suppress(OSError, ValueError):
                pipe.write(f"{pid}\n".encode())
                pipe.flush()

    def close(self, timeout: float = GRACE_S + 5) -> None:
        """The parent is done: the watchdog stops what is left and exits (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def pid(self) -> int | None:
        """The watchdog's pid (None when not running)."""
        return self._proc.pid if self._proc else None


if __name__ == "__main__":
    sys.exit(main())
