"""Signed bundles on the gateway: signature and hashes, state file, health verdict, switch-over."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
)

from edge.update import (
    Manifest,
    Previous,
    UpdateRefused,
    UpdateState,
    build_bundle,
    healthy,
    load_public_key,
    new_version_argv,
    point_current,
    verify_bundle,
)

KEY = Ed25519PrivateKey.generate()
WHEELS = {"wheels/citygate-0.2.0-py3-none-any.whl": b"PK\x03\x04 not really a wheel"}


def test_a_signed_bundle_verifies() -> None:
    manifest, files = verify_bundle(build_bundle(WHEELS, "0.2.0", KEY), KEY.public_key())
    assert manifest.version == "0.2.0" and manifest.deps == "bundled"
    assert files == WHEELS


def test_a_bundle_signed_by_another_key_is_refused() -> None:
    data = build_bundle(WHEELS, "0.2.0", Ed25519PrivateKey.generate())
    with pytest.raises(UpdateRefused, match="bad signature"):
        verify_bundle(data, KEY.public_key())


def _retar(data: bytes, change: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, \
            tarfile.open(fileobj=out, mode="w:gz") as tar:
        for m in src.getmembers():
            f = src.extractfile(m)
            blob = change.get(m.name, f.read() if f else b"")
            m.size = len(blob)
            tar.addfile(m, io.BytesIO(blob))
    return out.getvalue()


@pytest.mark.parametrize(("change", "why"), [
    ({"wheels/citygate-0.2.0-py3-none-any.whl": b"evil"}, "sha256"),
    ({"manifest.json": b'{"format": 1, "version": "6.6.6", "files": []}'}, "bad signature"),
    ({"manifest.sig": b"\0" * 64}, "bad signature"),
])
def test_tampering_is_refused(change: dict[str, bytes], why: str) -> None:
    with pytest.raises(UpdateRefused, match=why):
        verify_bundle(_retar(build_bundle(WHEELS, "0.2.0", KEY), change), KEY.public_key())


def test_only_wheels_may_be_shipped() -> None:
    with pytest.raises(UpdateRefused, match=r"only wheels"):
        verify_bundle(build_bundle({"wheels/../../etc/x.whl": b"x"}, "0.2.0", KEY),
                      KEY.public_key())
    with pytest.raises(UpdateRefused, match="not a readable archive"):
        verify_bundle(b"garbage", KEY.public_key())


def test_manifest_round_trip_and_public_key_forms(tmp_path: Path) -> None:
    m = Manifest("1.0", {"wheels/a.whl": ("ab" * 32, 3)}, "inherit")
    assert Manifest.parse(m.to_json()) == m
    with pytest.raises(UpdateRefused, match="malformed"):
        Manifest.parse(b'{"format": 2}')
    raw = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    pem = KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "release.pub").write_bytes(pem)
    for form in (raw.hex(), pem.decode(), str(tmp_path / "release.pub")):
        assert load_public_key(form).public_bytes(Encoding.Raw, PublicFormat.Raw) == raw


@pytest.mark.parametrize(("kw", "ok"), [
    ({"stalled": [], "uplink_up": True, "outbox_readings": 0, "acked_since_start": 0}, True),
    ({"stalled": [], "uplink_up": True, "outbox_readings": 50, "acked_since_start": 2}, True),
    ({"stalled": ["bus-a"], "uplink_up": True, "outbox_readings": 0, "acked_since_start": 0},
     False),
    ({"stalled": [], "uplink_up": False, "outbox_readings": 0, "acked_since_start": 0}, False),
    ({"stalled": [], "uplink_up": True, "outbox_readings": 50, "acked_since_start": 0}, False),
])
def test_health_verdict(kw: dict[str, object], ok: bool) -> None:
    assert healthy(**kw)[0] is ok  # type: ignore[arg-type]


def test_state_survives_a_restart_and_current_switches_atomically(tmp_path: Path) -> None:
    state = UpdateState("u1", "0.2.0", "switching", Previous("0.1.0", "/py", ["/py", "-m", "x"]))
    state.save(tmp_path / "update.json")
    assert UpdateState.load(tmp_path / "update.json") == state
    assert UpdateState.load(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{")
    assert UpdateState.load(tmp_path / "bad.json") is None
    for v in ("0.1.0", "0.2.0"):
        (tmp_path / "venvs" / v).mkdir(parents=True)
        point_current(tmp_path, tmp_path / "venvs" / v)
        assert (tmp_path / "current").resolve() == tmp_path / "venvs" / v
    argv = new_version_argv(tmp_path / "venvs" / "0.2.0", Path("/etc/citygate/gw.toml"))
    assert argv[1:4] == ["-P", "-m", "citygate.cli"]
