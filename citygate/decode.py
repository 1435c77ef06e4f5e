"""`citygate decode hj212`: one JSON object per captured frame, from a file, stdin or a port.

The capture is decoded by the gateway's own stream decoder (devices.hj212.StreamDecoder), so
it reads as the gateway read it: frames need no line breaks, and garbage, torn frames and
several frames on one line are resynchronised on the next frame start. Each frame, and each
frame the decoder rejects, is printed as one JSON object in the shape of
devices.hj212.decode_line; a summary goes to stderr. Exit status 0 when every frame was
valid, 1 when any was not, 2 when the input cannot be opened.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from typing import IO

from devices.hj212 import DecodedLine, StreamDecoder, describe


def decode_stream(chunks: Iterable[bytes],
                  decoder: StreamDecoder | None = None) -> Iterator[DecodedLine]:
    """Decode a byte stream frame by frame, resynchronising as the gateway does."""
    decoder = decoder or StreamDecoder()
    for chunk in chunks:
        for item in decoder.feed(chunk):
            yield describe(item)
    for item in decoder.flush():
        yield describe(item)


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
    decoder = StreamDecoder()
    try:
        if args.serial:
            return _emit(decode_stream(_serial_chunks(args.serial, args.baud), decoder),
                         sys.stdout)
        if args.file in (None, "-"):
            status = _emit(decode_stream(_file_chunks(sys.stdin.buffer), decoder), sys.stdout)
        else:
            with open(args.file, "rb") as f:
                status = _emit(decode_stream(_file_chunks(f), decoder), sys.stdout)
    except OSError as exc:  # also serial.SerialException
        print(f"citygate decode hj212: cannot read {args.serial or args.file}: {exc}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    print(summary(decoder), file=sys.stderr)
    return status


def summary(decoder: StreamDecoder) -> str:
    """One line: frames decoded, frames rejected by reason, bytes skipped between frames."""
    errors = {r: n for r, n in decoder.errors_by_reason.items() if n}
    rejected = ", ".join(f"{n} {r}" for r, n in errors.items())
    return (f"{decoder.frames_ok} frame(s) valid, {sum(errors.values())} rejected"
            f"{f' ({rejected})' if rejected else ''},"
            f" {decoder.bytes_discarded} byte(s) skipped")


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
