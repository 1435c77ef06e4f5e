"""Minimal CoAP (RFC 7252) message encoding for the node: CON POST out, ACK/response in.

Pure (no sockets): main.py does the UDP I/O and follows timeouts_ms() for retransmission.
MicroPython ships no CoAP library; this covers exactly what POST /p/r needs.
"""

TYPE_CON = 0
TYPE_NON = 1
TYPE_ACK = 2
TYPE_RST = 3

CODE_EMPTY = 0x00
CODE_POST = 0x02
CODE_CHANGED = 0x44  # 2.04
CODE_CREATED = 0x41  # 2.01

OPT_URI_PATH = 11
OPT_CONTENT_FORMAT = 12
CF_OCTET_STREAM = 42
CF_CBOR = 60

# RFC 7252 section 4.8 transmission parameters.
ACK_TIMEOUT_MS = 2000
ACK_RANDOM_FACTOR_PERMILLE = 1500
MAX_RETRANSMIT = 4


def timeouts_ms(rand01: float) -> list:
    """Wait before each (re)transmission: random initial timeout, doubled every retry."""
    span = ACK_TIMEOUT_MS * (ACK_RANDOM_FACTOR_PERMILLE - 1000) // 1000
    first = ACK_TIMEOUT_MS + int(span * rand01)
    return [first << k for k in range(MAX_RETRANSMIT + 1)]


def _option_nibble(value: int) -> tuple:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes([value - 13])
    value -= 269
    return 14, bytes([value >> 8, value & 0xFF])


def _option(delta: int, value: bytes) -> bytes:
    d, d_ext = _option_nibble(delta)
    n, n_ext = _option_nibble(len(value))
    return bytes([(d << 4) | n]) + d_ext + n_ext + value


def _uint(value: int) -> bytes:
    out = b""
    while value:
        out = bytes([value & 0xFF]) + out
        value >>= 8
    return out


def encode_post(mid: int, token: bytes, path: tuple, content_format: int, payload: bytes) -> bytes:
    """Encode a confirmable POST to `path` (tuple of segments) with a payload."""
    head = bytes([0x40 | len(token), CODE_POST, (mid >> 8) & 0xFF, mid & 0xFF]) + token
    parts = [head]
    last = 0
    for segment in path:
        parts.append(_option(OPT_URI_PATH - last, segment.encode()))
        last = OPT_URI_PATH
    parts.append(_option(OPT_CONTENT_FORMAT - last, _uint(content_format)))
    if payload:
        parts.append(b"\xff")
        parts.append(payload)
    return b"".join(parts)


def encode_empty_ack(mid: int) -> bytes:
    """Encode the empty ACK for a confirmable separate response."""
    return bytes([0x60, CODE_EMPTY, (mid >> 8) & 0xFF, mid & 0xFF])


def _skip_ext(nibble: int, data: bytes, pos: int) -> tuple:
    if nibble < 13:
        return nibble, pos
    if nibble == 13 and pos < len(data):
        return data[pos] + 13, pos + 1
    if nibble == 14 and pos + 1 < len(data):
        return ((data[pos] << 8) | data[pos + 1]) + 269, pos + 2
    return -1, pos


def parse(data: bytes) -> tuple | None:
    """Parse a message to (type, code, mid, token, payload); None if it is malformed."""
    if len(data) < 4 or data[0] >> 6 != 1:
        return None
    mtype = (data[0] >> 4) & 3
    tkl = data[0] & 0x0F
    if tkl > 8 or len(data) < 4 + tkl:
        return None
    mid = (data[2] << 8) | data[3]
    token = bytes(data[4 : 4 + tkl])
    pos = 4 + tkl
    while pos < len(data):
        if data[pos] == 0xFF:
            payload = bytes(data[pos + 1 :])
            return (mtype, data[1], mid, token, payload) if payload else None
        first = data[pos]
        delta, pos = _skip_ext(first >> 4, data, pos + 1)
        length, pos = _skip_ext(first & 0x0F, data, pos)
        if delta < 0 or length < 0 or pos + length > len(data):
            return None
        pos += length
    return (mtype, data[1], mid, token, b"")
