"""The technician's login (collector URL + token) and a small JSON client for the collector API."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from provisioning.errors import ProvisionError

CONFIG_ENV = "CITYGATE_PROVISION_HOME"


def home() -> Path:
    """Where the tool keeps its login and install log (default ~/.config/citygate)."""
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else Path.home() / ".config" / "citygate"


@dataclass(frozen=True, slots=True)
class Login:
    """A collector and the technician token used with it."""

    collector: str
    token: str
    technician: str = ""  # the token's name, recorded with each install

    def save(self, path: Path | None = None) -> Path:
        """Store the login readable by this user only."""
        path = path or home() / "login.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"collector": self.collector, "token": self.token,
                       "technician": self.technician}, f)
        return path

    @classmethod
    def load(cls, path: Path | None = None) -> Login:
        """The stored login, or a ProvisionError saying how to log in."""
        path = path or home() / "login.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(str(data["collector"]).rstrip("/"), str(data["token"]),
                       str(data.get("technician", "")))
        except (OSError, ValueError, KeyError):
            raise ProvisionError(
                "not logged in to a collector",
                "run `citygate provision login --collector URL --token TOKEN` with your "
                "technician token") from None


@dataclass(frozen=True, slots=True)
class Answer:
    """A decoded JSON answer and the server's Date header."""

    status: int
    body: Any
    date: float | None  # the collector's clock (epoch seconds) when it answered


class Collector:
    """Calls to the collector API with the technician's token."""

    def __init__(self, login: Login, timeout: float = 10.0) -> None:
        self.login = login
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None, *,
             ok: tuple[int, ...] = (200, 201, 202, 204)) -> Answer:
        """Send a request; raise ProvisionError (with a hint) unless the status is in `ok`."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.login.collector + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.login.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return _answer(resp.status, resp.read(), resp.headers.get("Date"))
        except urllib.error.HTTPError as exc:
            answer = _answer(exc.code, exc.read(), exc.headers.get("Date"))
            if exc.code in ok:
                return answer
            raise _explain(exc.code, answer.body, self.login.collector) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ProvisionError(
                f"cannot reach the collector at {self.login.collector}: {reason}",
                "check the network link, or work offline: results are queued and "
                "`citygate provision sync` uploads them later") from None


def _answer(status: int, raw: bytes, date: str | None) -> Answer:
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode(errors="replace")
    when = parsedate_to_datetime(date).timestamp() if date else None
    return Answer(status, body, when)


def _explain(status: int, body: Any, base: str) -> ProvisionError:
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):  # a 422: [{"loc": [...], "msg": ...}, ...]
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}"
                           if isinstance(d, dict) else str(d) for d in detail)
    hints = {
        401: "your token is unknown or revoked: log in again with a valid technician token",
        403: "your token's role may not do this: ask an administrator for a technician token",
        404: "check the id you typed (site, gateway)",
        409: "that id is taken: choose another, or leave --id out to get a generated one",
        503: "the collector is not connected to its broker: try again in a minute",
    }
    return ProvisionError(f"the collector at {base} answered {status}: {detail}",
                          hints.get(status, "see the collector's log for details"))
