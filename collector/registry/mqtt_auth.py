"""Per-gateway MQTT credentials and permissions: Mosquitto password/ACL files and the EMQX hook.

One policy, two renderings: `permitted()` answers a broker's HTTP ACL call (EMQX), and
`acl_text()` writes the same rules as a Mosquitto `acl_file`. A gateway's MQTT username is its
gateway id. It may publish only its own up-channels, and subscribe only to its own commands and
the collector's state. The collector user reads everything and writes commands and its state.

Each credential is bound to its client ids, so that no gateway can take over another session
(the broker disconnects the older of two connections with one client id, discarding a clean
session's queue and firing its last will): a gateway's client id is its username; the
collector's client ids live in a namespace no gateway id may take (`collector_namespace`).
`may_connect()` is that rule for the EMQX hook; on Mosquitto the gateways' listeners replace
the client id by the username (`use_username_as_clientid`) and the collector has a listener
and a password file of its own, so a gateway credential is refused there.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from devices import contract

log = logging.getLogger(__name__)

# Mosquitto 2's default. Gateway passwords are 192 random bits, so the iteration count does not
# protect them; a low count keeps EMQX's per-connect hook cheap.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
ROOT = contract.ROOT
# Collector state topics: one retained topic per collector (or the single v1 topic) below this.
COLLECTOR_STATE = f"{ROOT}/_collector/#"


def new_password() -> str:
    """A fresh random MQTT password (192 bits)."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, *, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto 2 `$7$` hash: PBKDF2-HMAC-SHA512, base64 salt and digest."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, 64)
    return (f"$7${iterations}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def verify_password(password: str, stored: str) -> bool:
    """Check a password against a `$7$` hash in constant time."""
    try:
        _, kind, iterations, salt, digest = stored.split("$")
        if kind != "7":
            return False
        expect = base64.b64decode(digest)
        got = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), base64.b64decode(salt),
                                  int(iterations), len(expect))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expect)


# --- the policy ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ServiceUser:
    """A non-gateway broker user (the collector)."""

    name: str
    password_hash: str


def _matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (+ one level, # the rest)."""
    f, t = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part not in ("+", t[i])):
            return False
    return len(f) == len(t)


def gateway_rules(gateway: str) -> tuple[list[str], list[str]]:
    """(write filters, read filters) of one gateway."""
    writes = [f"{ROOT}/{gateway}/{ch}" for ch in contract.UPLINK_CHANNELS]
    reads = [f"{ROOT}/{gateway}/{contract.CMD}/#", COLLECTOR_STATE]
    return writes, reads


COLLECTOR_WRITES = [f"{ROOT}/+/{contract.CMD}/#", COLLECTOR_STATE]
COLLECTOR_READS = [f"{ROOT}/#"]


def permitted(user: str, topic: str, action: str, *, gateways: set[str],
              collector_user: str) -> bool:
    """May `user` publish ("publish") or subscribe/receive ("subscribe") on `topic`?"""
    if user == collector_user:
        writes, reads = COLLECTOR_WRITES, COLLECTOR_READS
    elif user in gateways:
        writes, reads = gateway_rules(user)
    else:
        return False
    if action == "publish":
        return any(_matches(f, topic) for f in writes)
    if action == "subscribe":
        # A subscription filter is allowed only when every topic it can match is readable;
        # treating wildcards literally against our filters gives exactly that for our rules.
        return any(_matches(f, topic) for f in reads)
    return False


# Client ids of the collector's connections (ingest, command and update channels, notifiers,
# `--client-id collector-K`) start with one of these; gateway ids may not.
COLLECTOR_ID_PREFIXES = ("citygate", "collector")


def collector_namespace(client_id: str) -> bool:
    """Is this id reserved for the collector's own connections (never a gateway's id)?"""
    return client_id.startswith(COLLECTOR_ID_PREFIXES)


def may_connect(user: str, client_id: str, *, gateways: set[str], collector_user: str) -> bool:
    """May an authenticated `user` hold a session under `client_id`?"""
    if user == collector_user:
        return collector_namespace(client_id) and client_id not in gateways
    return user in gateways and client_id == user


def acl_text(gateways: Iterable[str], collector_user: str) -> str:
    """The Mosquitto acl_file for these gateways and the collector user."""
    out = ["# Generated by CityGate from the gateway registry: do not edit by hand.",
           f"user {collector_user}"]
    out += [f"topic write {t}" for t in COLLECTOR_WRITES]
    out += [f"topic read {t}" for t in COLLECTOR_READS]
    for gw in sorted(gateways):
        writes, reads = gateway_rules(gw)
        out += ["", f"user {gw}"]
        out += [f"topic write {t}" for t in writes]
        out += [f"topic read {t}" for t in reads]
    return "\n".join(out) + "\n"


def password_text(users: dict[str, str]) -> str:
    """The Mosquitto password_file from username -> `$7$` hash."""
    for name in users:
        if ":" in name or not name:
            raise ValueError(f"{name!r} cannot be a broker username")
    return "".join(f"{name}:{h}\n" for name, h in sorted(users.items()))


# --- writing and reloading -----------------------------------------------------------------------

@dataclass
class BrokerFiles:
    """Where the broker's auth files live and how to tell it to reload them."""

    password_file: Path  # the gateways' listeners
    acl_file: Path
    collector_user: str = "citygate-collector"
    collector_password_hash: str = ""
    pid_file: Path | None = None  # mosquitto's pid_file, for SIGHUP
    extra_users: dict[str, str] = field(default_factory=dict)  # on the gateways' listeners
    # The collector's listener; default: `<password_file>.collector` beside it.
    collector_password_file: Path | None = None

    def __post_init__(self) -> None:
        if self.collector_password_file is None:
            self.collector_password_file = self.password_file.with_name(
                self.password_file.name + ".collector")

    def write(self, gateway_hashes: dict[str, str], *, reload: bool = True) -> None:
        """Write the files atomically (0600) for these gateways, then ask mosquitto to reload."""
        assert self.collector_password_file is not None
        collector = ({self.collector_user: self.collector_password_hash}
                     if self.collector_password_hash else {})
        _atomic_write(self.password_file,
                      password_text({**self.extra_users, **gateway_hashes}))
        _atomic_write(self.collector_password_file, password_text(collector))
        _atomic_write(self.acl_file, acl_text(gateway_hashes, self.collector_user))
        if reload:
            self.reload()

    def reload(self) -> bool:
        """SIGHUP mosquitto (it re-reads password and ACL files); False if it is not running."""
        if self.pid_file is None:
            return False
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            log.warning("broker: cannot signal reload via %s: %s", self.pid_file, exc)
            return False
        log.info("broker: asked mosquitto (pid %d) to reload its password and ACL files", pid)
        return True


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
