"""A serial null-modem cable made of two pseudo-terminals, with a hook to tamper with bytes.

Each end has a path (`/dev/pts/N`) that a program opens like a real serial port. A thread
copies bytes between the two masters; `tamper` may rewrite or add bytes in flight (a babbling
line, a flipped bit), which is how faults are injected where the bytes flow.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

Tamper = Callable[[str, bytes], bytes]  # (direction "a>b" or "b>a", data) -> data


class PtyLink:
    """Two connected pseudo-terminal ends: `a_path` and `b_path`."""

    def __init__(self, tamper: Tamper | None = None, baudrate: int | None = None,
                 bits_per_char: int = 10) -> None:
        self.tamper = tamper
        # Optional wire pacing: ptys move bytes at memory speed, a 9600-baud line does not.
        self.baudrate = baudrate
        self.bits_per_char = bits_per_char
        self.bytes_injected = 0
        self._babble: threading.Thread | None = None
        self._babble_stop = threading.Event()
        self.a_path = self.b_path = ""
        self._fds: list[int] = []
        self._thread: threading.Thread | None = None
        self._stop_r = self._stop_w = -1
        self.bytes_forwarded = 0

    def open(self) -> PtyLink:
        """Create both pseudo-terminals and start forwarding."""
        ma, sa = os.openpty()
        mb, sb = os.openpty()
        for fd in (ma, sa, mb, sb):
            tty.setraw(fd)  # no echo or line editing before a program opens its end
        self._fds = [ma, sa, mb, sb]
        self.a_path, self.b_path = os.ttyname(sa), os.ttyname(sb)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._pump, name="ptylink", daemon=True)
        self._thread.start()
        return self

    def link(self, path: str | Path, end: str = "b") -> None:
        """Make `path` a symlink to one end, so a config can name a stable device path."""
        target = self.b_path if end == "b" else self.a_path
        p = Path(path)
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
        p.symlink_to(target)

    def inject(self, direction: str, data: bytes) -> None:
        """Write bytes onto the line as if they came from one end ("a>b" reaches b)."""
        os.write(self._fds[2] if direction == "a>b" else self._fds[0], data)

    def start_babble(self, every: float, burst: tuple[int, int] = (4, 24),
                     seed: int | None = None) -> None:
        """Inject a burst of random bytes in both directions every `every` seconds."""
        rng = random.Random(seed)

        def babble() -> None:
            while not self._babble_stop.wait(every):
                for direction in ("a>b", "b>a"):
                    noise = rng.randbytes(rng.randint(*burst))
                    with contextlib.suppress(OSError, IndexError):
                        self.inject(direction, noise)
                        self.bytes_injected += len(noise)

        self._babble = threading.Thread(target=babble, name="ptylink-babble", daemon=True)
        self._babble.start()

    def stop_babble(self) -> None:
        """Stop injecting noise; the line stays up (idempotent)."""
        self._babble_stop.set()
        if self._babble is not None:
            self._babble.join(timeout=2)
            self._babble = None
        self._babble_stop = threading.Event()

    def wire_time(self, nbytes: int) -> float:
        """Seconds `nbytes` take on the emulated wire (0 without pacing)."""
        return 0.0 if not self.baudrate else nbytes * self.bits_per_char / self.baudrate

    def _pump(self) -> None:
        ma, _, mb, _ = self._fds
        while True:
            ready, _, _ = select.select([ma, mb, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # the other side closed its end; keep the link up
                    continue
                direction = "a>b" if fd == ma else "b>a"
                if self.tamper is not None:
                    data = self.tamper(direction, data)
                if data:
                    if self.baudrate:
                        time.sleep(self.wire_time(len(data)))
                    os.write(mb if fd == ma else ma, data)
                    self.bytes_forwarded += len(data)

    def close(self) -> None:
        """Stop forwarding and close both ends (idempotent)."""
        self.stop_babble()
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")
            if self._thread is not None:
                self._thread.join(timeout=2)
            for fd in (*self._fds, self._stop_r, self._stop_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds, self._stop_r, self._stop_w = [], -1, -1

    def __enter__(self) -> PtyLink:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
