"""HJ 212 (environmental monitoring data transmission) codec, sans-IO.

Parses and builds HJ 212-2017 frames, tolerates HJ/T 212-2005 traffic, splits and reassembles
multi-packet uploads and decodes byte streams. No sockets, serial ports, clocks or asyncio.
"""

from devices.hj212.codec import (
    MAX_FRAME,
    MAX_SEGMENT,
    REASONS,
    Frame,
    FrameError,
    Reason,
    build,
    build_data_answer,
    crc16,
    parse,
    wrap_segment,
)
from devices.hj212.line import DecodedLine, decode_line, describe
from devices.hj212.split import Reassembler, split
from devices.hj212.stream import StreamDecoder

__all__ = [
    "MAX_FRAME",
    "MAX_SEGMENT",
    "REASONS",
    "DecodedLine",
    "Frame",
    "FrameError",
    "Reason",
    "Reassembler",
    "StreamDecoder",
    "build",
    "build_data_answer",
    "crc16",
    "decode_line",
    "describe",
    "parse",
    "split",
    "wrap_segment",
]
