"""Signed agent updates on the gateway: verify, install beside, switch, check health, roll back.

A bundle is a tar archive: `manifest.json`, `manifest.sig` (Ed25519 over the manifest's exact
bytes, made with the project's release key) and the files the manifest lists (wheels), each
with its sha256 and size. The gateway trusts only the release public key in its config
(`[update] public_key`); the collector is a courier, so a compromised collector or a broken
download cannot get code run.

Install: a new venv `<root>/venvs/<version>` beside the running one, filled from the bundle's
wheels with `pip --no-index`. `deps = "bundled"` bundles carry every dependency; `"inherit"`
(app-only) bundles link the running environment's site-packages, which stay installed.

Switch: the running version writes `update.json` in the data directory (beside the outbox,
which both versions share), stops its agent (the outbox is committed and closed), points
`<root>/current` at the new venv and re-executes the new interpreter in the same process, so
systemd (Type=notify, same PID) sees no restart. The new version checks its own health within
`health_deadline`; if it is not healthy it points `current` back and re-executes the previous
interpreter, which reports `rolled_back`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

FORMAT = 1
STATE_FILE = "update.json"
Status = Literal["switching", "applied", "rolled_back"]


class UpdateRefused(Exception):
    """A bundle that must not be installed; `reason` says why, for the reply and the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a bundle claims to contain."""

    version: str
    files: dict[str, tuple[str, int]]  # path in the bundle -> (sha256 hex, size)
    deps: Literal["bundled", "inherit"] = "bundled"
    name: str = "citygate"

    def to_json(self) -> bytes:
        """The canonical manifest bytes (what is signed)."""
        doc = {"format": FORMAT, "name": self.name, "version": self.version, "deps": self.deps,
               "files": [{"path": p, "sha256": h, "size": n}
                         for p, (h, n) in sorted(self.files.items())]}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """Read manifest bytes; UpdateRefused when malformed."""
        try:
            doc = json.loads(data)
            files = {str(f["path"]): (str(f["sha256"]), int(f["size"])) for f in doc["files"]}
            if doc.get("format") != FORMAT or doc.get("deps", "bundled") not in ("bundled",
                                                                                  "inherit"):
                raise ValueError("unknown format or deps")
            return cls(str(doc["version"]), files, doc.get("deps", "bundled"),
                       str(doc.get("name", "citygate")))
        except (ValueError, KeyError, TypeError) as exc:
            raise UpdateRefused(f"manifest is malformed: {exc}") from None


def load_public_key(text: str) -> Any:
    """The Ed25519 public key from a PEM file path, PEM text or 64 hex digits."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    text = text.strip()
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    pem = text.encode() if text.startswith("-----BEGIN") else Path(text).read_bytes()
    key = load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the release key must be an Ed25519 public key")
    return key


def build_bundle(manifest_files: dict[str, bytes], version: str, private_key: Any,
                 deps: Literal["bundled", "inherit"] = "bundled") -> bytes:
    """A signed bundle of these files (release tooling and tests)."""
    import tarfile

    manifest = Manifest(version, {p: (hashlib.sha256(b).hexdigest(), len(b))
                                  for p, b in manifest_files.items()}, deps)
    body = manifest.to_json()
    members = {"manifest.json": body, "manifest.sig": private_key.sign(body), **manifest_files}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def verify_bundle(data: bytes, public_key: Any) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest and files of a bundle whose signature and hashes hold; else UpdateRefused."""
    import tarfile

    from cryptography.exceptions import InvalidSignature

    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            members = {m.name: tar.extractfile(m) for m in tar.getmembers() if m.isfile()}
            blobs = {name: f.read() for name, f in members.items() if f is not None}
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UpdateRefused(f"bundle is not a readable archive: {exc}") from None
    body, sig = blobs.pop("manifest.json", None), blobs.pop("manifest.sig", None)
    if body is None or sig is None:
        raise UpdateRefused("bundle has no manifest.json or manifest.sig")
    try:
        public_key.verify(sig, body)
    except InvalidSignature:
        raise UpdateRefused("bad signature: the bundle is not signed by the release key") from None
    manifest = Manifest.parse(body)
    for path, (digest, size) in manifest.files.items():
        blob = blobs.get(path)
        if blob is None or len(blob) != size or hashlib.sha256(blob).hexdigest() != digest:
            raise UpdateRefused(f"{path}: missing or does not match its sha256 in the manifest")
        if "/" in path.removeprefix("wheels/") or not path.endswith(".whl"):
            raise UpdateRefused(f"{path}: only wheels/<name>.whl may be installed")
    return manifest, {p: blobs[p] for p in manifest.files}


def install(manifest: Manifest, files: dict[str, bytes], root: Path) -> Path:
    """Install the bundle into `<root>/venvs/<version>` (kept if already complete)."""
    import sysconfig
    import venv

    target = root / "venvs" / manifest.version
    if (target / "bin" / "citygate").exists():
        return target
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        subprocess.run(["rm", "-rf", str(partial)], check=True)
    venv.EnvBuilder(with_pip=False, symlinks=True).create(partial)
    if manifest.deps == "inherit":
        site = Path(sysconfig.get_paths(vars={"base": str(partial),
                                              "platbase": str(partial)})["purelib"])
        here = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
        (site / "citygate-inherited.pth").write_text("".join(p + "\n" for p in here))
    with tempfile.TemporaryDirectory(prefix="citygate-wheels-") as tmp:
        for path, blob in files.items():
            (Path(tmp) / Path(path).name).write_bytes(blob)
        cmd = [sys.executable, "-m", "pip", "--python", str(partial / "bin" / "python"),
               "install", "--quiet", "--no-index", "--find-links", tmp,
               "--disable-pip-version-check",
               *(["--no-deps"] if manifest.deps == "inherit" else []),
               f"{manifest.name}=={manifest.version}"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if r.returncode != 0:
        raise UpdateRefused(f"install failed: {r.stderr.strip()[-400:]}")
    os.replace(partial, target)
    return target


def point_current(root: Path, target: Path) -> None:
    """Atomically make `<root>/current` point at `target`."""
    tmp = root / "current.new"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(os.path.relpath(target, root))
    os.replace(tmp, root / "current")


@dataclass
class Previous:
    """How to go back: the version that ran before, its interpreter and its command line."""

    version: str
    python: str
    argv: list[str]
    venv: str = ""


@dataclass
class UpdateState:
    """The update in progress or last finished, kept in `<data_dir>/update.json`."""

    id: str
    version: str
    status: Status
    previous: Previous
    deadline_s: float = 60.0
    replied: bool = False
    reason: str = ""
    boot_attempts: int = 0  # starts counted by packaging/citygate-boot-guard
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> UpdateState | None:
        """The stored state, or None when there is none (or it is unreadable)."""
        try:
            doc = json.loads(path.read_text())
            doc["previous"] = Previous(**doc["previous"])
            return cls(**doc)
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def save(self, path: Path) -> None:
        """Write atomically (fsync, rename): it must survive a power cut mid-update."""
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def current_process() -> Previous:
    """This process as something to come back to."""
    from edge.agent import VERSION

    return Previous(VERSION, sys.executable, list(sys.orig_argv), sys.prefix)


def reexec(python: str, argv: list[str]) -> None:
    """Replace this process (same PID) with `argv` run by `python`."""
    logging.shutdown()
    os.execv(python, [python, *argv[1:]])


def new_version_argv(venv_dir: Path, config: Path) -> list[str]:
    """The command line of the new version (-P: the working directory never shadows it)."""
    python = str(venv_dir / "bin" / "python")
    return [python, "-P", "-m", "citygate.cli", "edge", "run", "--config", str(config)]


def healthy(*, stalled: list[str], uplink_up: bool, outbox_readings: int,
            acked_since_start: int) -> tuple[bool, str]:
    """The new version's verdict on itself: loops run, uplink up, outbox draining."""
    if stalled:
        return False, f"no progress in {', '.join(stalled)}"
    if not uplink_up:
        return False, "the uplink is not connected"
    if outbox_readings > 0 and acked_since_start == 0:
        return False, "the outbox is not draining"
    return True, "healthy"
