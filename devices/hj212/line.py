"""Frames and frame errors in the technician's JSON shape (backs ``citygate decode hj212``)."""

from __future__ import annotations

from typing import TypedDict

from devices.hj212.codec import CP_CLOSE, HEADER_LEN, Frame, FrameError, parse


class DecodedLine(TypedDict):
    """JSON shape printed by ``citygate decode hj212``."""

    valid: bool
    error: str | None
    st: str | None
    cn: str | None
    mn: str | None
    flag: int | None
    cp: dict[str, str]


def _salvage(line: str) -> tuple[dict[str, str], dict[str, str]]:
    """Best-effort header fields and CP items of a frame that failed validation."""
    data = line[HEADER_LEN:] if line.startswith("##") else line
    head, _, rest = data.partition("CP=")
    header: dict[str, str] = {}
    for part in head.split(";"):
        key, eq, value = part.partition("=")
        if eq and key:
            header.setdefault(key, value)
    cp: dict[str, str] = {}
    body = rest.removeprefix("&&").partition(CP_CLOSE)[0]
    for group in body.split(";"):
        for item in group.split(","):
            key, eq, value = item.partition("=")
            if eq and key:
                cp[key] = value
    return header, cp


def _flag(text: str | None) -> int | None:
    # isdigit() alone admits non-ASCII digits such as "²", which int() rejects.
    if text is None or not (text.isascii() and text.isdigit() and len(text) <= 3):
        return None
    value = int(text)
    return value if value <= 255 else None


def decode_line(line: str) -> DecodedLine:
    """Decode one captured frame into the technician's JSON shape, valid or not."""
    line = line.strip()
    try:
        frame = parse(line)
    except FrameError as exc:
        return describe_error(exc, line)
    return describe(frame)


def describe(item: Frame | FrameError) -> DecodedLine:
    """A frame, or an error from the stream decoder (salvaged from its bytes), as JSON."""
    if isinstance(item, FrameError):
        return describe_error(item, item.raw.decode("utf-8", errors="replace"))
    return DecodedLine(
        valid=True, error=None, st=item.st, cn=item.cn, mn=item.mn, flag=item.flag,
        cp=dict(item.cp),
    )


def describe_error(exc: FrameError, text: str) -> DecodedLine:
    """A rejected frame as JSON, with what can be salvaged of its header and CP from `text`."""
    header, cp = _salvage(text.strip())
    return DecodedLine(
        valid=False, error=f"{exc.reason}: {exc.message}", st=header.get("ST"),
        cn=header.get("CN"), mn=header.get("MN"), flag=_flag(header.get("Flag")), cp=cp,
    )
