"""A TCP proxy we control, to cut the network between a gateway and its broker.

Modes: "pass" forwards bytes; "drop" closes every connection and refuses new ones (a router
reboot); "blackhole" keeps connections open but forwards nothing (a dead mobile link: the
TCP session looks alive until keep-alives time out).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading


class NetProxy:
    """Listens on 127.0.0.1:`port` and forwards to 127.0.0.1:`target`."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self.mode = "pass"
        self.connections = 0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self._stop = threading.Event()

    def start(self) -> NetProxy:
        """Start accepting."""
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        ls.settimeout(0.2)
        self._listener = ls
        threading.Thread(target=self._accept, name="netproxy", daemon=True).start()
        return self

    def set_mode(self, mode: str) -> None:
        """Switch to "pass", "drop" or "blackhole"; "drop" closes what is open."""
        self.mode = mode
        if mode == "drop":
            with self._lock:
                pairs, self._pairs = self._pairs, []
            for a, b in pairs:
                for s in (a, b):
                    with contextlib.suppress(OSError):
                        s.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.mode == "drop":
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                client.close()
                continue
            self.connections += 1
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([a, b], [], [], 0.2)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if self.mode == "pass":
                        peers[s].sendall(data)
                    # blackhole: read and discard, answer nothing
        except (OSError, ValueError):
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def stop(self) -> None:
        """Close everything."""
        self._stop.set()
        self.set_mode("drop")
        if self._listener is not None:
            self._listener.close()
