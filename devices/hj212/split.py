"""Multi-packet HJ 212 uploads: `split` a long CP into PNUM/PNO packets, `Reassembler` merges."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from devices.hj212.codec import (
    MAX_SEGMENT,
    CpInput,
    Frame,
    FrameError,
    flatten,
    header_fields,
    layout,
    segment_text,
    wrap_segment,
)

SPLIT_FLAG = 0x02


def _is_data_time_group(group: Mapping[str, str]) -> bool:
    return list(group) == ["DataTime"]


def _pack(
    fixed: list[dict[str, str]], body: list[dict[str, str]], size_of: int, max_segment: int
) -> list[list[dict[str, str]]]:
    """Greedily fill packets with whole CP groups; `size_of` is the worst-case header size."""

    def size(groups: list[dict[str, str]]) -> int:
        return size_of + len(segment_text([], fixed + groups).encode("utf-8"))

    packets: list[list[dict[str, str]]] = []
    current: list[dict[str, str]] = []
    for group in body:
        if size([group]) > max_segment:
            raise FrameError("too_long", f"CP group {list(group)} alone exceeds {max_segment}")
        if current and size([*current, group]) > max_segment:
            packets.append(current)
            current = []
        current.append(group)
    if current or not packets:
        packets.append(current)
    return packets


def split(
    *, st: str | None, cn: str | None, pw: str | None, mn: str | None, cp: CpInput,
    qn: str, flag: int = 4, max_segment: int = MAX_SEGMENT,
) -> list[bytes]:
    """Build one frame, or PNUM/PNO packets with Flag bit1 set when the CP does not fit."""
    if not 0 < max_segment <= MAX_SEGMENT:
        raise ValueError(f"max_segment must be in 1..{MAX_SEGMENT}")
    groups = layout(cp)

    def header(flags: int, pnum: int | None, pno: int | None) -> list[tuple[str, str | int | None]]:
        return header_fields(qn=qn, st=st, cn=cn, pw=pw, mn=mn, flag=flags, pnum=pnum, pno=pno)

    single = segment_text(header(flag, None, None), groups)
    if len(single.encode("utf-8")) <= max_segment:
        return [wrap_segment(single)]
    # Every packet repeats a leading DataTime group so each one can be read on its own.
    fixed = groups[:1] if groups and _is_data_time_group(groups[0]) else []
    body = groups[len(fixed):]
    widest = 10 ** len(str(max(len(body), 1))) - 1  # PNUM never has more digits than this
    worst_header = segment_text(header(flag | SPLIT_FLAG, widest, widest), [])
    size_of = len(worst_header.encode("utf-8")) - len("CP=&&&&")
    packets = _pack(fixed, body, size_of, max_segment)
    return [
        wrap_segment(segment_text(header(flag | SPLIT_FLAG, len(packets), number), fixed + packet))
        for number, packet in enumerate(packets, start=1)
    ]


def merge(parts: Sequence[Frame]) -> Frame:
    """Merge packets PNO 1..PNUM (in order) into one unsplit Frame."""
    groups: list[dict[str, str]] = []
    for part in parts:
        for group in part.cp_groups:
            if _is_data_time_group(group) and group in groups:
                continue  # the DataTime every packet repeats
            groups.append(group)
    first = parts[0]
    flag = None if first.flag is None else first.flag & ~SPLIT_FLAG
    return replace(first, flag=flag, pnum=None, pno=None, cp=flatten(groups), cp_groups=groups)


@dataclass
class _PendingSet:
    pnum: int
    parts: dict[int, Frame]
    last_seen: int


Key = tuple[str | None, str | None, str | None]


class Reassembler:
    """Collects split uploads keyed by (MN, QN, CN); memory is bounded by the caps below."""

    def __init__(
        self, *, max_pending: int = 32, max_idle_frames: int = 1000, max_parts: int = 128
    ) -> None:
        self.max_pending = max_pending
        self.max_idle_frames = max_idle_frames
        self.max_parts = max_parts
        self.dropped_sets = 0  # incomplete sets given up (idle, evicted, restarted, expired)
        self._pending: dict[Key, _PendingSet] = {}
        self._tick = 0

    @property
    def pending(self) -> int:
        """Number of incomplete sets held."""
        return len(self._pending)

    def add(self, frame: Frame) -> Frame | None:
        """Return the merged Frame when `frame` completes its set, `frame` if unsplit, else None."""
        self._tick += 1
        self._drop_idle()
        if frame.pnum is None or frame.pno is None:
            return frame
        if frame.pnum > self.max_parts:
            raise FrameError("too_long", f"PNUM={frame.pnum} exceeds max_parts={self.max_parts}")
        if not 1 <= frame.pno <= frame.pnum:
            raise FrameError("bad_segment", f"PNO={frame.pno} is outside 1..PNUM={frame.pnum}")
        key = (frame.mn, frame.qn, frame.cn)
        entry = self._pending.get(key)
        if entry is not None and entry.pnum != frame.pnum:
            self._drop(key)  # the sender restarted the upload with another split
            entry = None
        if entry is None:
            if len(self._pending) >= self.max_pending:
                self._drop(min(self._pending, key=lambda k: self._pending[k].last_seen))
            entry = self._pending[key] = _PendingSet(frame.pnum, {}, self._tick)
        entry.parts[frame.pno] = frame  # a retransmitted packet replaces the earlier copy
        entry.last_seen = self._tick
        if len(entry.parts) < entry.pnum:
            return None
        del self._pending[key]
        return merge([entry.parts[number] for number in range(1, entry.pnum + 1)])

    def expire(self, older_than_qn: str) -> int:
        """Drop incomplete sets whose QN sorts before `older_than_qn`; return how many."""
        stale = [key for key in self._pending if (key[1] or "") < older_than_qn]
        for key in stale:
            self._drop(key)
        return len(stale)

    def _drop_idle(self) -> None:
        idle = [
            key for key, entry in self._pending.items()
            if self._tick - entry.last_seen > self.max_idle_frames
        ]
        for key in idle:
            self._drop(key)

    def _drop(self, key: Key) -> None:
        del self._pending[key]
        self.dropped_sets += 1
