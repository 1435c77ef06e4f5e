"""Incremental HJ 212 decoding of a byte stream (TCP or serial), resynchronising on ``##``."""

from __future__ import annotations

from devices.hj212.codec import (
    CRC_LEN,
    HEADER_LEN,
    MAX_FRAME,
    MAX_SEGMENT,
    REASONS,
    Frame,
    FrameError,
    parse,
)

Item = Frame | FrameError


def _failure(raw: bytes) -> FrameError:
    """Return why `raw` (a frame start cut short by something else) is not a frame."""
    try:
        parse(raw)
    except FrameError as exc:
        exc.raw = raw
        return exc
    return FrameError("truncated", "frame cut short", raw)  # parse() rejects short prefixes


class StreamDecoder:
    """Feed arbitrary chunks; get complete Frames and FrameErrors back in stream order.

    The one stream parser of the project: the gateway's HJ 212 source and
    ``citygate decode hj212`` both use it, so a capture decodes as the gateway saw it. Frames
    need no line breaks around them: garbage, torn frames and several frames on one line are
    resynchronised on the next ``##`` + 4 digits.

    The buffer never holds more than one frame (MAX_FRAME bytes): bytes before a ``##`` are
    discarded at once and counted. A run of more than `babble_limit` bytes without any ``##``
    is reported once as "too_long" (a babbling line). A ``##`` + 4 digits inside a frame that is
    still incomplete is taken as the start of the next frame, so the partial one is reported
    (usually "truncated") without waiting for bytes that may never come.
    """

    def __init__(self, *, babble_limit: int = 2 * MAX_FRAME) -> None:
        self.babble_limit = babble_limit
        self.frames_ok = 0
        self.errors_by_reason: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.bytes_discarded = 0
        self._buf = bytearray()
        self._garbage_run = 0
        self._babble_reported = False
        self._crlf_due = b""  # the rest of a frame's CRLF, which may come in later chunks

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Item]:
        """Consume a chunk; return the frames and errors it completed, in order."""
        self._buf += data
        out: list[Item] = []
        while self._step(out):
            pass
        return out

    def flush(self) -> list[Item]:
        """End of input: report a partial frame left in the buffer and clear it."""
        out: list[Item] = []
        start = self._buf.find(b"##")
        if start == -1:
            self._discard_garbage(len(self._buf), out)
        else:
            self._discard_garbage(start, out)
            self._reject(_failure(bytes(self._buf)), len(self._buf), out)
        self._garbage_run = 0
        self._babble_reported = False
        self._crlf_due = b""
        return out

    def _step(self, out: list[Item]) -> bool:
        """Make one decision about the buffer; False means more bytes are needed."""
        buf = self._buf
        self._eat_crlf()
        start = buf.find(b"##")
        if start == -1:
            keep = 1 if buf.endswith(b"#") else 0  # may be the first half of "##"
            self._discard_garbage(len(buf) - keep, out)
            return False
        self._discard_garbage(start, out)
        self._garbage_run = 0
        self._babble_reported = False
        if len(buf) < HEADER_LEN:
            return False
        digits = bytes(buf[2:HEADER_LEN])
        if not digits.isdigit():
            if digits.startswith(b"#"):  # "###...": the frame starts one byte later
                self._discard(1)
            else:
                self._reject(FrameError("bad_header", f"'##' followed by {digits!r}"), 2, out)
            return True
        declared = int(digits)
        if declared > MAX_SEGMENT:
            message = f"declared length {declared} exceeds {MAX_SEGMENT}"
            self._reject(FrameError("too_long", message), 2, out)
            return True
        end = HEADER_LEN + declared + CRC_LEN
        inner = self._next_frame_start(HEADER_LEN, end)
        if inner != -1:
            self._reject(_failure(bytes(buf[:inner])), inner, out)
            return True
        if len(buf) < end:
            return False
        try:
            frame = parse(bytes(buf[:end]))
        except FrameError as exc:
            exc.raw = bytes(buf[:end])
            self._reject(exc, 2, out)  # resync: the next "##" may lie inside this window
            return True
        del buf[:end]
        self._crlf_due = b"\r\n"
        self._eat_crlf()
        self.frames_ok += 1
        out.append(frame)
        return True

    def _next_frame_start(self, low: int, high: int) -> int:
        """Index of a ``##`` + 4 digits beginning in buf[low:high], else -1."""
        buf = self._buf
        pos = buf.find(b"##", low, high + 1)
        while pos != -1:
            digits = bytes(buf[pos + 2 : pos + HEADER_LEN])
            if len(digits) == 4 and digits.isdigit():
                return pos
            pos = buf.find(b"##", pos + 1, high + 1)
        return -1

    def _eat_crlf(self) -> None:
        while self._crlf_due and self._buf:
            if self._buf[0] == self._crlf_due[0]:
                del self._buf[:1]
                self._crlf_due = self._crlf_due[1:]
            else:
                self._crlf_due = b""

    def _discard(self, count: int) -> None:
        del self._buf[:count]
        self.bytes_discarded += count

    def _discard_garbage(self, count: int, out: list[Item]) -> None:
        if count <= 0:
            return
        self._discard(count)
        self._garbage_run += count
        if self._garbage_run > self.babble_limit and not self._babble_reported:
            self._babble_reported = True
            message = f"{self._garbage_run} bytes without a frame start (babbling line?)"
            self._count_error(FrameError("too_long", message), out)

    def _reject(self, error: FrameError, count: int, out: list[Item]) -> None:
        self._discard(count)
        self._count_error(error, out)

    def _count_error(self, error: FrameError, out: list[Item]) -> None:
        self.errors_by_reason[error.reason] += 1
        out.append(error)
