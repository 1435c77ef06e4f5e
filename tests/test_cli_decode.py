"""`citygate decode hj212` as a technician runs it: a subprocess over a capture file or stdin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devices.hj212 import decode_line

GOOD = ("##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;"
        "Flag=5;CP=&&RtdInterval=30&&1C80")
OLD_2005 = ("##0117ST=31;CN=2011;PW=;MN=88888880000001;CP=&&DataTime=20240501100000123;"
            "03-Rtd=31.5,03-ZsRtd=42.4,03-Flag=N;S01-Rtd=8.5&&6900")
CORRUPT = GOOD.replace("RtdInterval=30", "RtdInterval=31")  # one digit changed in flight
EXPECTED = [
    '{"valid": true, "error": null, "st": "32", "cn": "1062", "mn": "010000A8900016F000169DC0",'
    ' "flag": 5, "cp": {"RtdInterval": "30"}}',
    '{"valid": true, "error": null, "st": "31", "cn": "2011", "mn": "88888880000001",'
    ' "flag": null, "cp": {"DataTime": "20240501100000123", "03-Rtd": "31.5",'
    ' "03-ZsRtd": "42.4", "03-Flag": "N", "S01-Rtd": "8.5"}}',
    '{"valid": false, "error": "bad_crc: CRC 1C80 does not match computed 2080", "st": "32",'
    ' "cn": "1062", "mn": "010000A8900016F000169DC0", "flag": 5, "cp": {"RtdInterval": "31"}}',
]


def decode(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "citygate.cli", "decode", "hj212", *args],
                          input=stdin.decode() if stdin is not None else None,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    """A capture with a good 2017 frame, a 2005 frame, a corrupt frame and a blank line."""
    path = tmp_path / "capture.txt"
    path.write_bytes(f"{GOOD}\r\n{OLD_2005}\r\n\r\n{CORRUPT}\r\n".encode())
    return path


def test_file_gives_one_json_object_per_frame_in_decode_line_shape(capture: Path) -> None:
    done = decode(str(capture))
    assert done.stdout.splitlines() == EXPECTED
    assert done.returncode == 1  # one frame was not valid
    for line, frame in zip(done.stdout.splitlines(), (GOOD, OLD_2005, CORRUPT), strict=True):
        assert json.loads(line) == decode_line(frame)


def test_stdin_and_all_valid_exit_zero(capture: Path) -> None:
    done = decode("-", stdin=f"{GOOD}\r\n{OLD_2005}\r\n".encode())
    assert (done.stdout.splitlines(), done.returncode) == (EXPECTED[:2], 0)


def test_missing_file_is_a_clear_error() -> None:
    done = decode("/nonexistent/capture.txt")
    assert done.returncode == 2
    assert "cannot read /nonexistent/capture.txt" in done.stderr
    assert done.stdout == ""


def test_serial_port_is_decoded_live(tmp_path: Path) -> None:
    import os
    import select
    import time

    from devices.sim.ptylink import PtyLink

    with PtyLink() as link:
        proc = subprocess.Popen(
            [sys.executable, "-m", "citygate.cli", "decode", "hj212", "--serial", link.b_path,
             "--baud", "9600"], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            fd = os.open(link.a_path, os.O_RDWR | os.O_NOCTTY)
            try:
                # Keep writing until the decoder has the port open (opening flushes input).
                deadline = time.monotonic() + 20
                while not select.select([proc.stdout], [], [], 0.3)[0]:
                    assert time.monotonic() < deadline, "no output from decode --serial"
                    os.write(fd, f"{GOOD}\r\n".encode())
                os.write(fd, f"{CORRUPT}\r\n".encode())
                lines = [proc.stdout.readline().strip()]
                while '"valid": false' not in lines[-1]:
                    lines.append(proc.stdout.readline().strip())
            finally:
                os.close(fd)
            assert set(lines[:-1]) == {EXPECTED[0]}  # the good frame, maybe sent repeatedly
            assert lines[-1] == EXPECTED[2]
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_interleaved_capture_is_resynchronised_inside_lines_as_the_gateway_does(
        tmp_path: Path) -> None:
    from tests.hj212_capture import GOOD_FRAMES, REJECTED, interleaved, order

    path = tmp_path / "interleaved.txt"
    path.write_bytes(interleaved())
    done = decode(str(path))
    objects = [json.loads(line) for line in done.stdout.splitlines()]
    valid = [o["cp"]["a34002-Rtd"] for o in objects if o["valid"]]
    assert valid == [str(80 + i) for i in order()]
    assert len(valid) == GOOD_FRAMES == 19
    errors = [o["error"].partition(":")[0] for o in objects if not o["valid"]]
    assert sorted(errors) == sorted(r for r, n in REJECTED.items() for _ in range(n))
    corrupt = next(o for o in objects if o["error"] and o["error"].startswith("bad_crc"))
    assert (corrupt["mn"], corrupt["cp"]["DataTime"]) == ("010000A8900016F000169DC0",
                                                          "20240501100009")  # salvaged
    assert done.stderr == ("19 frame(s) valid, 4 rejected (1 bad_header, 1 bad_crc,"
                           " 2 truncated), 252 byte(s) skipped\n")
    assert done.returncode == 1
