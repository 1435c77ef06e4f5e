"""The collector's command channel: publishes `cmd/<name>` to a gateway and collects replies.

A separate, clean-session broker link beside ingest (which keeps its persistent session for
data): commands are worth nothing once their caller gave up, so none is queued across restarts.
The link is the collector's `MqttLink`, driven by an event loop: inside the collector `run()`
is one of the feature's tasks; `start()` / `stop()` run it on a private loop thread for
synchronous users (tools, tests).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from collector.mqtt_link import LinkSettings, LoopThread, Message, MqttLink, NotConnected
from devices import contract
from devices.contract import ReplyMessage

log = logging.getLogger(__name__)
REPLIES_KEPT = 2000
PUBACK_TIMEOUT_S = 30.0


class CommandChannel:
    """Publish commands, remember the latest replies (bounded), wake whoever waits for one."""

    def __init__(self, broker_url: str, *, username: str | None = None,
                 password: str | None = None, client_id: str = "citygate-collector-cmd",
                 ca_file: str | None = None,
                 on_reply: Callable[[ReplyMessage], None] | None = None) -> None:
        self.link = MqttLink(LinkSettings.from_url(
            broker_url, username=username, password=password, client_id=client_id,
            ca_file=ca_file, clean_session=True, keepalive=30), on_message=self._on_message)
        self.link.subscribe(f"{contract.ROOT}/+/{contract.REPLY}", contract.QOS)
        self.connected = self.link.connected  # threading.Event: is the link up now
        self.on_reply = on_reply or (lambda reply: None)
        self.send_failures = 0
        self._replies: OrderedDict[tuple[str, str], ReplyMessage] = OrderedDict()
        self._cond = threading.Condition()
        self._thread: LoopThread | None = None

    async def run(self) -> None:
        """Stay connected (reconnecting with backoff) until cancelled or closed."""
        await self.link.run()

    async def aclose(self) -> None:
        """Disconnect (idempotent)."""
        await self.link.aclose()

    def start(self) -> None:
        """Connect on a private event-loop thread (for callers without a loop of their own)."""
        if self._thread is None:
            self._thread = LoopThread(f"{self.link.settings.client_id}-loop")
            self._thread.submit(self.run())

    def stop(self) -> None:
        """Disconnect and stop the private thread (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            try:
                thread.submit(self.aclose()).result(5)
            finally:
                thread.stop()

    def _on_message(self, msg: Message) -> None:
        try:
            rec = contract.decode(msg.topic, msg.payload)
        except contract.ContractError as exc:
            log.debug("command channel: ignored %s: %s", msg.topic, exc)
            return
        reply = rec.message
        if not isinstance(reply, ReplyMessage):
            return
        try:
            self.on_reply(reply)  # before waking waiters: they read what it records
        except Exception:  # the link must survive a failing handler
            log.exception("command channel: reply handler failed for %s", reply.id)
        with self._cond:
            self._replies[(reply.gateway, reply.id)] = reply
            while len(self._replies) > REPLIES_KEPT:
                self._replies.popitem(last=False)
            self._cond.notify_all()

    def send(self, gateway: str, name: str, payload: bytes) -> bool:
        """Publish a command at QoS 1 (from any thread, never blocking); False when the broker
        link is down. A PUBACK that never comes is counted in `send_failures`."""
        if not self.connected.is_set():
            return False
        try:
            done = self.link.publish_threadsafe(contract.topic(gateway, contract.CMD, name),
                                                payload, qos=contract.QOS,
                                                timeout=PUBACK_TIMEOUT_S)
        except NotConnected:
            return False
        done.add_done_callback(self._sent)
        return True

    def _sent(self, done: concurrent.futures.Future[None]) -> None:
        exc = None if done.cancelled() else done.exception()
        if exc is not None:
            self.send_failures += 1
            log.warning("command channel: a command was not acknowledged: %s", exc)

    def reply(self, gateway: str, reply_id: str) -> ReplyMessage | None:
        """A reply seen recently, or None."""
        with self._cond:
            return self._replies.get((gateway, reply_id))

    def wait(self, gateway: str, reply_id: str, timeout: float) -> ReplyMessage | None:
        """Block until that reply arrives or `timeout` passes (call from a worker thread)."""
        with self._cond:
            self._cond.wait_for(lambda: (gateway, reply_id) in self._replies, timeout)
            return self._replies.get((gateway, reply_id))
