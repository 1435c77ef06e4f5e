"""HJ 212 frame codec: CRC, parse, build and the 9014 data answer (sans-IO).

Wire format (HJ 212-2017): ``##`` + 4-digit decimal length of the data segment + data segment
(at most 1024 bytes) + CRC as 4 hex digits + CRLF. The parser also accepts HJ/T 212-2005
traffic: no QN, no Flag, header fields in the 2005 order, empty PW or MN, unknown codes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, TypeAlias, get_args

Reason: TypeAlias = Literal[
    "bad_header", "bad_length", "bad_crc", "truncated", "bad_segment", "too_long", "bad_cp"
]
REASONS: Final[tuple[Reason, ...]] = get_args(Reason)

MAX_SEGMENT: Final = 1024
HEADER_LEN: Final = 6  # "##" + 4 length digits
CRC_LEN: Final = 4
MAX_FRAME: Final = HEADER_LEN + MAX_SEGMENT + CRC_LEN + 2  # with CRLF

CP_OPEN: Final = "CP=&&"
CP_CLOSE: Final = "&&"

CpInput: TypeAlias = Mapping[str, str] | Sequence[Mapping[str, str]]

_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_BAD_IN_CP_KEY: Final = "=;,&"
_BAD_IN_CP_VALUE: Final = ";,&"
_BAD_IN_HEADER_VALUE: Final = ";&"


class FrameError(ValueError):
    """A frame that cannot be accepted; `reason` is one of REASONS, `message` is for people."""

    def __init__(self, reason: Reason, message: str = "", raw: bytes = b"") -> None:
        self.reason: Reason = reason
        self.message = message or reason.replace("_", " ")
        self.raw = raw  # the rejected bytes when a stream decoder knows them, else b""
        super().__init__(f"{reason}: {self.message}")


def _make_table() -> tuple[int, ...]:
    table = []
    for value in range(256):
        register = value
        for _ in range(8):
            register = (register >> 1) ^ 0xA001 if register & 1 else register >> 1
        table.append(register)
    return tuple(table)


# After `register = (register >> 8) ^ byte` the high byte is always zero, so the eight
# shift/XOR steps of Annex A are exactly one lookup (and only 256 CRC values exist).
_CRC_TABLE: Final = _make_table()


def crc16(data: bytes) -> int:
    """Return the HJ 212-2017 Annex A CRC of `data` (not CRC-16/MODBUS)."""
    register = 0xFFFF
    for byte in data:
        register = _CRC_TABLE[(register >> 8) ^ byte]
    return register


def _parse_data_time(text: str) -> datetime | None:
    if not (text.isascii() and text.isdigit() and len(text) in (14, 17)):
        return None
    millis = int(text[14:]) if len(text) == 17 else 0
    try:
        return datetime(
            int(text[0:4]), int(text[4:6]), int(text[6:8]),
            int(text[8:10]), int(text[10:12]), int(text[12:14]), millis * 1000,
        )
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded HJ 212 data segment; CP keys and values exactly as on the wire."""

    qn: str | None = None
    st: str | None = None
    cn: str | None = None
    pw: str | None = None
    mn: str | None = None
    flag: int | None = None
    pnum: int | None = None
    pno: int | None = None
    # All groups merged; when a key repeats (e.g. PolId in CN=3020) the last one wins.
    cp: dict[str, str] = field(default_factory=dict, hash=False)
    cp_groups: list[dict[str, str]] = field(default_factory=list, hash=False)

    @property
    def answer_required(self) -> bool:
        """Flag bit0 (A): the sender wants a 9014 data answer."""
        return self.flag is not None and bool(self.flag & 0x01)

    @property
    def is_split(self) -> bool:
        """Flag bit1 (D): this packet is one of PNUM packets."""
        return self.flag is not None and bool(self.flag & 0x02)

    @property
    def version(self) -> int | None:
        """Flag bits 2-7: protocol version (1 = HJ 212-2017), None when Flag is absent."""
        return None if self.flag is None else (self.flag >> 2) & 0x3F

    @property
    def data_time(self) -> datetime | None:
        """CP DataTime as a naive datetime (14 digits, or 17 with milliseconds), else None."""
        text = self.cp.get("DataTime")
        return None if text is None else _parse_data_time(text)


def flatten(groups: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """Merge CP groups into one dict; a repeated key keeps its last value."""
    merged: dict[str, str] = {}
    for group in groups:
        merged.update(group)
    return merged


# ---------------------------------------------------------------------------------- parse


def _is_hex(data: bytes) -> bool:
    return len(data) == CRC_LEN and all(byte in _HEX for byte in data)


def _as_bytes(frame: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(frame, str):
        try:
            return frame.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise FrameError("bad_segment", "text cannot be encoded as UTF-8") from exc
    return bytes(frame)


def unwrap(raw: bytes) -> bytes:
    """Check ``##``, declared length and CRC of one frame (no CRLF); return its data segment."""
    if not raw.startswith(b"##"):
        raise FrameError("bad_header", "frame must start with '##'")
    digits = raw[2:HEADER_LEN]
    if len(digits) < 4 and (not digits or digits.isdigit()):
        raise FrameError("truncated", "frame ends inside the length field")
    if not digits.isdigit():
        raise FrameError("bad_header", f"length field {digits!r} is not 4 decimal digits")
    declared = int(digits)
    if declared > MAX_SEGMENT:
        raise FrameError("too_long", f"declared length {declared} exceeds {MAX_SEGMENT}")
    body = raw[HEADER_LEN:]
    if len(body) != declared + CRC_LEN:
        ends_like_frame = body[-6:-4] == b"&&" and _is_hex(body[-4:])
        if len(body) < declared + CRC_LEN and not ends_like_frame:
            raise FrameError(
                "truncated", f"got {len(body)} of {declared + CRC_LEN} bytes after the length"
            )
        raise FrameError(
            "bad_length", f"declared length {declared}, data segment has {len(body) - CRC_LEN}"
        )
    segment, crc_field = body[:declared], body[declared:]
    if not _is_hex(crc_field):
        if not segment.endswith(b"&&"):
            raise FrameError("bad_length", f"declared length {declared} does not end at '&&'")
        raise FrameError("bad_crc", f"CRC field {crc_field!r} is not 4 hex digits")
    computed = crc16(segment)
    if int(crc_field, 16) != computed:
        raise FrameError(
            "bad_crc", f"CRC {crc_field.decode()} does not match computed {computed:04X}"
        )
    return segment


def _decode_text(segment: bytes) -> str:
    # The standard is ASCII; some loggers put GBK text in CP values.
    for encoding in ("utf-8", "gb18030"):
        try:
            return segment.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise FrameError("bad_segment", "data segment is neither UTF-8 nor GB18030 text")


def _split_header(header: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in header.split(";"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise FrameError("bad_segment", f"header field {part!r} is not key=value")
        if key in fields:
            raise FrameError("bad_segment", f"header field {key} appears twice")
        fields[key] = value
    return fields


def _header_int(fields: Mapping[str, str], key: str, low: int, high: int) -> int | None:
    text = fields.get(key)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 5):
        raise FrameError("bad_segment", f"{key}={text!r} is not a number")
    value = int(text)
    if not low <= value <= high:
        raise FrameError("bad_segment", f"{key}={value} is outside {low}..{high}")
    return value


def _split_cp(cp_text: str) -> list[dict[str, str]]:
    groups: list[dict[str, str]] = []
    for group_text in cp_text.split(";"):
        group: dict[str, str] = {}
        for item in group_text.split(","):
            if not item:
                continue
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise FrameError("bad_cp", f"CP item {item!r} is not key=value")
            group[key] = value
        if group:
            groups.append(group)
    return groups


def parse_segment(text: str) -> Frame:
    """Parse a data segment (``QN=...;...;CP=&&...&&``) whose length and CRC are checked."""
    cp_at = text.find(CP_OPEN)
    if cp_at == -1:
        if "CP=" in text:
            raise FrameError("bad_cp", "CP must open with '&&'")
        raise FrameError("bad_segment", "no CP field")
    if cp_at and text[cp_at - 1] != ";":
        raise FrameError("bad_segment", "CP must follow ';'")
    cp_body = text[cp_at + len(CP_OPEN):]
    if not cp_body.endswith(CP_CLOSE):
        raise FrameError("bad_cp", "CP must close with '&&'")
    fields = _split_header(text[:cp_at])
    pnum = _header_int(fields, "PNUM", 1, 99999)
    pno = _header_int(fields, "PNO", 1, 99999)
    if (pnum is None) != (pno is None):
        raise FrameError("bad_segment", "PNUM and PNO must appear together")
    if pnum is not None and pno is not None and pno > pnum:
        raise FrameError("bad_segment", f"PNO={pno} exceeds PNUM={pnum}")
    groups = _split_cp(cp_body[: -len(CP_CLOSE)])
    return Frame(
        qn=fields.get("QN"), st=fields.get("ST"), cn=fields.get("CN"),
        pw=fields.get("PW"), mn=fields.get("MN"), flag=_header_int(fields, "Flag", 0, 255),
        pnum=pnum, pno=pno, cp=flatten(groups), cp_groups=groups,
    )


def parse(frame: bytes | str) -> Frame:
    """Parse one complete frame (optionally ending in CRLF); raise FrameError if invalid."""
    raw = _as_bytes(frame)
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    return parse_segment(_decode_text(unwrap(raw)))


# ---------------------------------------------------------------------------------- build


def layout(cp: CpInput) -> list[dict[str, str]]:
    """Return CP groups: a list is kept as is; a dict groups consecutive items per factor code."""
    if not isinstance(cp, Mapping):
        return [dict(group) for group in cp if group]
    groups: list[dict[str, str]] = []
    last_code: str | None = None
    for key, value in cp.items():
        code, dash, _ = key.partition("-")
        # "a34002-Rtd" and "a34002-Flag" share a group; DataTime etc. stand alone.
        if dash and code == last_code:
            groups[-1][key] = value
        else:
            groups.append({key: value})
        last_code = code if dash else None
    return groups


def cp_text(groups: Sequence[Mapping[str, str]]) -> str:
    """Render CP groups as ``k=v,k=v;k=v`` after checking they cannot break the grammar."""
    rendered = []
    for group in groups:
        items = []
        for key, value in group.items():
            if not key or any(char in key for char in _BAD_IN_CP_KEY):
                raise FrameError("bad_cp", f"CP key {key!r} is empty or contains one of =;,&")
            if any(char in value for char in _BAD_IN_CP_VALUE):
                raise FrameError("bad_cp", f"CP value {value!r} for {key} contains one of ;,&")
            items.append(f"{key}={value}")
        rendered.append(",".join(items))
    return ";".join(rendered)


def segment_text(
    header: Sequence[tuple[str, str | int | None]], groups: Sequence[Mapping[str, str]]
) -> str:
    """Render a data segment from ordered header fields (None = omitted) and CP groups."""
    parts = []
    for key, value in header:
        if value is None:
            continue
        text = str(value)
        if any(char in text for char in _BAD_IN_HEADER_VALUE):
            raise FrameError("bad_segment", f"{key} value {text!r} contains ';' or '&'")
        parts.append(f"{key}={text};")
    return "".join(parts) + CP_OPEN + cp_text(groups) + CP_CLOSE


def wrap_segment(segment: str | bytes) -> bytes:
    """Frame a data segment: ``##`` + length + segment + CRC + CRLF."""
    data = segment.encode("utf-8") if isinstance(segment, str) else bytes(segment)
    if len(data) > MAX_SEGMENT:
        raise FrameError("too_long", f"data segment of {len(data)} bytes exceeds {MAX_SEGMENT}")
    return b"##%04d%s%04X\r\n" % (len(data), data, crc16(data))


def header_fields(
    *, qn: str | None, st: str | None, cn: str | None, pw: str | None, mn: str | None,
    flag: int | None, pnum: int | None, pno: int | None,
) -> list[tuple[str, str | int | None]]:
    """Validate header values and return them in HJ 212-2017 field order."""
    if flag is not None and not 0 <= flag <= 255:
        raise FrameError("bad_segment", f"Flag={flag} is outside 0..255")
    if (pnum is None) != (pno is None):
        raise FrameError("bad_segment", "PNUM and PNO must be given together")
    if pnum is not None and pno is not None and not 1 <= pno <= pnum:
        raise FrameError("bad_segment", f"PNO={pno} is outside 1..PNUM={pnum}")
    return [
        ("QN", qn), ("ST", st), ("CN", cn), ("PW", pw), ("MN", mn),
        ("Flag", flag), ("PNUM", pnum), ("PNO", pno),
    ]


def build(
    *, st: str | None, cn: str | None, pw: str | None, mn: str | None, cp: CpInput,
    qn: str | None = None, flag: int | None = None,
    pnum: int | None = None, pno: int | None = None,
) -> bytes:
    """Build a complete frame with length, CRC and CRLF; None header values are omitted."""
    header = header_fields(qn=qn, st=st, cn=cn, pw=pw, mn=mn, flag=flag, pnum=pnum, pno=pno)
    return wrap_segment(segment_text(header, layout(cp)))


def build_data_answer(frame: Frame) -> bytes | None:
    """Return the 9014 data answer for `frame`, or None when its Flag did not ask for one."""
    if not frame.answer_required:
        return None
    return build(qn=frame.qn, st="91", cn="9014", pw=frame.pw, mn=frame.mn, flag=4, cp={})
