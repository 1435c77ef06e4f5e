"""`citygate decode hj212`: one JSON object per captured frame, from a file, stdin or a port.

Each line of a capture (frames end in CRLF) is decoded by devices.hj212.decode_line and printed
as one JSON object in exactly its shape. Exit status 0 when every frame was valid, 1 when any
was not, 2 when the input cannot be opened.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from typing import IO

from devices.hj212 import MAX_FRAME, DecodedLine, decode_line


def decode_stream(chunks: Iterable[bytes]) -> Iterator[DecodedLine]:
    """Split a byte stream into lines and decode each non-empty one."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) > 4 * MAX_FRAME:  # a babbling line without newlines
            lines.append(pending)
            pending = b""
        for line in lines:
            if line.strip():
                yield decode_line(line.decode("utf-8", errors="replace"))
    if pending.strip():
        yield decode_line(pending.decode("utf-8", errors="replace"))


def _file_chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(65536):
        yield chunk


def _serial_chunks(port: str, baud: int) -> Iterator[bytes]:
    import serial

    with serial.Serial(port, baudrate=baud, timeout=0.5) as ser:
        while True:
            chunk = ser.read(4096)
            if chunk:
                yield chunk


def _emit(decoded: Iterable[DecodedLine], out: IO[str]) -> int:
    status = 0
    for item in decoded:
        out.write(json.dumps(item, ensure_ascii=False) + "\n")
        out.flush()
        if not item["valid"]:
            status = 1
    return status


def cmd_decode_hj212(args: argparse.Namespace) -> int:
    """Decode HJ 212 frames from a capture file, stdin or a serial port."""
    try:
        if args.serial:
            return _emit(decode_stream(_serial_chunks(args.serial, args.baud)), sys.stdout)
        if args.file in (None, "-"):
            return _emit(decode_stream(_file_chunks(sys.stdin.buffer)), sys.stdout)
        with open(args.file, "rb") as f:
            return _emit(decode_stream(_file_chunks(f)), sys.stdout)
    except OSError as exc:  # also serial.SerialException
        print(f"citygate decode hj212: cannot read {args.serial or args.file}: {exc}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `decode` subcommand group to the citygate parser."""
    decode = sub.add_parser("decode", help="decode captured protocol frames").add_subparsers(
        dest="decode_cmd", required=True)
    hj = decode.add_parser("hj212", help="HJ 212 frames → one JSON object per frame",
                           description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    hj.add_argument("file", nargs="?", metavar="FILE|-", help="capture file (default stdin)")
    hj.add_argument("--serial", metavar="PORT", help="read a serial port instead (Ctrl-C ends)")
    hj.add_argument("--baud", type=int, default=9600, help="serial baud rate (default 9600)")
    hj.set_defaults(func=cmd_decode_hj212)
