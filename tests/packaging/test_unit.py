"""The systemd unit, install scripts and udev rules in packaging/: valid and hardened."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
UNIT = PACKAGING / "citygate-edge.service"


def directives(text: str) -> dict[str, list[str]]:
    """`Section.Key` -> every value given (systemd keys may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def test_service_runs_unprivileged_supervised_and_hardened() -> None:
    d = directives(UNIT.read_text())
    want = {
        "Service.Type": "notify", "Service.User": "citygate", "Service.Restart": "on-failure",
        "Service.SupplementaryGroups": "dialout", "Service.ProtectSystem": "strict",
        "Service.NoNewPrivileges": "yes", "Service.PrivateTmp": "yes",
        "Service.ProtectHome": "yes", "Service.NotifyAccess": "main",
        "Service.ReadWritePaths": "/var/lib/citygate /opt/citygate",
        "Install.WantedBy": "multi-user.target",
    }
    for key, value in want.items():
        assert d.get(key) == [value], key
    assert d["Service.WatchdogSec"][0].endswith("s")
    assert d["Service.ExecStart"][0].startswith("/opt/citygate/current/bin/citygate edge run")
    assert "char-ttyUSB rw" in d["Service.DeviceAllow"]
    assert d["Service.CapabilityBoundingSet"] == [""]


def _verify(unit_text: str, tmp_path: Path) -> str:
    exe = tmp_path / "citygate"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    unit = tmp_path / "citygate-edge.service"
    unit.write_text(unit_text.replace("/opt/citygate/current/bin/citygate", str(exe)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], check=False, capture_output=True,
                       text=True, timeout=60, env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    # verify exits 0 on unknown keys and bad values too; its diagnostics name the file.
    return "\n".join(x for x in (r.stdout + r.stderr).splitlines() if unit.name in x)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (not worth pulling systemd into "
                           "a container); the static checks above still run")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    assert _verify(UNIT.read_text(), tmp_path) == ""
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=sometimes")
    assert "protect system" in _verify(broken, tmp_path)  # the check can fail


@pytest.mark.parametrize("script", ["install.sh", "build-bundle.sh"])
def test_scripts_parse_and_are_executable(script: str) -> None:
    path = PACKAGING / script
    assert os.access(path, os.X_OK)
    subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)
    text = path.read_text()
    assert "set -euo pipefail" in text


def test_install_is_offline_and_switches_atomically() -> None:
    text = (PACKAGING / "install.sh").read_text()
    assert text.count("--no-index") >= 2 and "--find-links" in text
    assert 'mv -T "$PREFIX/current.new" "$PREFIX/current"' in text
    assert "sha256sum --quiet -c SHA256SUMS" in text


def test_udev_rules_give_fixed_names_to_the_dialout_group() -> None:
    rules = [x for x in (PACKAGING / "99-citygate-serial.rules").read_text().splitlines()
             if x and not x.startswith("#")]
    assert rules
    for rule in rules:
        assert 'SYMLINK+="citygate/' in rule and 'GROUP="dialout"' in rule, rule


def _guard(data: Path, prefix: Path) -> str:
    out = subprocess.run(["python3", str(PACKAGING / "citygate-boot-guard"), str(data),
                          str(prefix)], check=True, capture_output=True, text=True, timeout=30)
    return out.stdout


def test_boot_guard_rolls_back_a_version_that_never_comes_up(tmp_path: Path) -> None:
    data, prefix = tmp_path / "data", tmp_path / "opt"
    old, new = prefix / "venvs" / "1.0", prefix / "venvs" / "1.1"
    for d in (data, old, new):
        d.mkdir(parents=True)
    (prefix / "current").symlink_to("venvs/1.1")  # the update switched to 1.1
    state = {"id": "u1", "version": "1.1", "status": "switching", "replied": False,
             "previous": {"version": "1.0", "python": str(old / "bin/python"), "argv": [],
                          "venv": str(old)}}
    (data / "update.json").write_text(json.dumps(state))
    for n in (1, 2, 3):  # 1.1 crashes at start, systemd starts it again
        assert f"start {n} of version 1.1" in _guard(data, prefix)
        assert os.readlink(prefix / "current") == "venvs/1.1"
    assert "did not come up after 3 starts" in _guard(data, prefix)
    assert (prefix / "current").resolve() == old.resolve()
    after = json.loads((data / "update.json").read_text())
    assert (after["status"], after["boot_attempts"], after["replied"]) == \
        ("rolled_back", 4, False)  # the previous version will report it
    assert "is rolled_back" in _guard(data, prefix)  # and nothing more happens


def test_boot_guard_leaves_a_finished_update_alone(tmp_path: Path) -> None:
    (tmp_path / "update.json").write_text(json.dumps({"id": "u2", "status": "applied"}))
    assert "is applied" in _guard(tmp_path, tmp_path)
    assert "no update in progress" in _guard(tmp_path / "none", tmp_path)


def test_the_agent_reads_the_guards_count() -> None:
    from edge.update import UpdateState

    assert "boot_attempts" in UpdateState.__dataclass_fields__
