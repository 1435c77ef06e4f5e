"""An interleaved HJ 212 capture: 19 good frames among garbage, torn and corrupt frames, with
several frames on one line and frames without line breaks (as a noisy RS-232 line gives)."""

from __future__ import annotations

from devices.hj212 import build

MN = "010000A8900016F000169DC0"
GOOD_FRAMES = 19
# What the stream decoder rejects in it, by reason.
REJECTED = {"bad_header": 1, "bad_crc": 1, "truncated": 2}


def good(i: int) -> bytes:
    """Good frame number i: a real-time dust upload with pm10 = 80 + i, asking for an answer."""
    return build(qn=f"20240501100{i:03d}000", st="39", cn="2011", pw="123456", mn=MN, flag=5,
                 cp={"DataTime": f"20240501100{i:03d}", "a34002-Rtd": f"{80 + i}",
                     "a34002-Flag": "N"})


def interleaved() -> bytes:
    """The capture; frames 1..19 are each complete exactly once, in order."""
    f = {i: good(i) for i in range(1, GOOD_FRAMES + 1)}
    corrupt = bytearray(good(9))
    corrupt[40] ^= 1
    lines = [
        f[1],
        b"noise" + f[2],  # garbage before a frame
        f[3][:-2] + f[4],  # two frames on one line
        f[5][:30] + f[6][:-2] + f[5],  # a torn frame (truncated), then frames 6 and 5
        f[7][:-2] + b"xx##99" + f[8],  # a false start (bad_header) between two frames
        bytes(corrupt)[:-2] + f[9],  # a corrupted copy (bad_crc), then the frame
        f[10] + f[11][:-2] + b"\x00\xff" + f[12],
        f[13][:-2] + f[14][:-2] + f[15][:-2] + f[16][:50] + b"\r\n",  # torn at the line end
        f[16],
        f[17][:-2] + b"garbage" + f[18][:-2] + b"##" + f[19],  # "####" before a frame
    ]
    return b"".join(lines)


def order() -> list[int]:
    """Frame numbers in the order they complete in the capture."""
    return [1, 2, 3, 4, 6, 5, *range(7, GOOD_FRAMES + 1)]
