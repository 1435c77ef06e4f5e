"""`citygate provision config push / status / revert`: arguments, local checks, exit codes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from provisioning import cli
from provisioning.cli_args import _seconds


def status(stage: str, **gw: Any) -> dict[str, Any]:
    gateways = [{"gateway_id": g, "stage": "canary", "status": s[0], "detail": s[1]}
                for g, s in gw.items()]
    summary: dict[str, int] = {}
    for g in gateways:
        summary[g["status"]] = summary.get(g["status"], 0) + 1
    return {"rollout_id": "cfg-1", "kind": "push", "stage": stage, "canaries": 1,
            "summary": summary, "gateways": gateways}


class Answer:
    def __init__(self, body: Any) -> None:
        self.body = body


class FakeCollector:
    """Answers GETs of a rollout with the next status in line."""

    def __init__(self, *later: dict[str, Any]) -> None:
        self.later = list(later)
        self.calls: list[tuple[str, str, Any]] = []

    def call(self, method: str, path: str, body: Any = None) -> Answer:
        self.calls.append((method, path, body))
        if method == "POST":
            return Answer(status("canary", a=("pending", {})))
        return Answer(self.later.pop(0))


def test_durations() -> None:
    assert _seconds("90") == 90 and _seconds("90s") == 90
    assert _seconds("15m") == 900 and _seconds("2h") == 7200
    with pytest.raises(argparse.ArgumentTypeError):
        _seconds("soon")


@pytest.mark.parametrize("argv", [
    ["config", "push", "--patch", "p.toml"],  # nobody
    ["config", "push", "--all", "--site", "s1", "--patch", "p.toml"],  # two selectors
    ["config", "push", "--all"],  # nothing to push
    ["config", "push", "--all", "--patch", "p", "--config", "c"],
    ["config", "status"],
])
def test_argument_mistakes_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["provision", *argv])
    assert exc.value.code == 2


def test_an_oversize_file_is_refused_before_any_call(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.toml"
    big.write_text("#" * (cli.CONFIG_MAX_BYTES + 1))
    assert cli.main(["provision", "config", "push", "--all", "--config", str(big)]) == 2
    assert "at most" in capsys.readouterr().out


def test_push_follows_to_halted_and_says_which_devices_were_silent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    patch = tmp_path / "p.toml"
    patch.write_text('[uplink]\nhealth_interval = "9s"\n')
    fake = FakeCollector(status("halted", a=("rolled_back", {"reason": "devices_silent",
                                                             "devices": ["lift-1"]}),
                                b=("skipped", {})))
    monkeypatch.setattr(cli, "_collector", lambda optional=False: fake)
    monkeypatch.setattr(cli.time, "sleep", lambda s: None)
    code = cli.main(["provision", "config", "push", "--group", "north", "--patch", str(patch),
                     "--canary-percent", "10", "--device-grace", "2m", "--wait", "1m"])
    out = capsys.readouterr().out
    assert code == 1 and "halted" in out and "devices_silent: lift-1" in out
    method, path, body = fake.calls[0]
    assert (method, path) == ("POST", "/api/v1/config/rollouts")
    assert body["group"] == "north" and body["canary_percent"] == 10
    assert body["device_grace_s"] == 120 and body["patch_toml"] == patch.read_text()
    assert "canaries" not in body and "config_toml" not in body


def test_status_and_revert_exit_0_when_done(monkeypatch: pytest.MonkeyPatch) -> None:
    done = status("done", a=("confirmed", {}))
    fake = FakeCollector(done, done)
    monkeypatch.setattr(cli, "_collector", lambda optional=False: fake)
    assert cli.main(["provision", "config", "status", "--rollout", "cfg-1"]) == 0
    fake.call = lambda method, path, body=None: Answer(done)  # type: ignore[method-assign]
    assert cli.main(["provision", "config", "revert", "--rollout", "cfg-1", "--wait", "5s"]) == 0
