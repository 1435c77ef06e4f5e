"""Commands from the gateway, piggybacked on the CoAP reply: configure, recalibrate, ack (pure).

The gateway sends at most one command per reply, after the config (codec.decode_command); the
node applies it once per tag and puts the ack (tag, result, the settings now in force) after
its next report body. A repeated tag (the gateway did not get the ack, or restarted) is not
applied again: the stored result is acked again. A heartbeat set by a command wins over the
bus default in every reply's config. Settings and the last tag are kept in flash by main.py
(snapshot/restore), so a power cut keeps them.
"""

import struct

import codec
import detector

_MAGIC = b"CGR1"
_FORMAT = ">BIB6I"  # heartbeat fixed, last tag, last result, the six settings by code 1..6


class Remote:
    """The node's side of remote commands around a detector."""

    def __init__(self, det: detector.Detector, heartbeat_s: int) -> None:
        self.det = det
        self.heartbeat_s = heartbeat_s
        self.heartbeat_fixed = False  # set by a command: the bus default no longer applies
        self.last_tag = 0
        self.last_result = 0
        self.ack = b""  # to send after the next report body

    def settings(self) -> list:
        """(code, value) of every setting, in code order."""
        d = self.det
        return [
            (codec.SET_HEARTBEAT_S, self.heartbeat_s),
            (codec.SET_ENTER_MG, d.enter_mg),
            (codec.SET_LEAVE_MG, d.leave_mg),
            (codec.SET_ENTER_SAMPLES, d.enter_samples),
            (codec.SET_LEAVE_SAMPLES, d.leave_samples),
            (codec.SET_SETTLE_MG, d.settle_mg),
        ]

    def bus_heartbeat(self, heartbeat_s: int) -> None:
        """The heartbeat of a reply's config (0: none), unless a command set one."""
        if heartbeat_s > 0 and not self.heartbeat_fixed:
            self.heartbeat_s = heartbeat_s

    def handle(self, payload: bytes, sample: tuple) -> bool:
        """Apply the command in a reply payload, if any, and prepare its ack; True when the
        settings changed (persist them). `sample` is the latest (x, y, z, temp_dc)."""
        cmd = codec.decode_command(payload)
        if cmd is None:
            return False
        op, tag, items = cmd
        changed = tag != self.last_tag
        if changed:
            self.last_result = self._apply(op, items, sample)
            self.last_tag = tag
        self.ack = codec.encode_ack(tag, self.last_result, self.settings())
        return changed

    def _apply(self, op: int, items: list, sample: tuple) -> int:
        if op == codec.OP_RECALIBRATE:
            self.det.calibrate(sample[0], sample[1], sample[2], sample[3])
            return codec.RESULT_OK
        if op != codec.OP_CONFIGURE:
            return codec.RESULT_UNSUPPORTED
        new = {}
        for code, value in self.settings():
            new[code] = value
        for code, value in items:
            bounds = codec.SETTING_BOUNDS.get(code)
            if bounds is None or value < bounds[0] or value > bounds[1]:
                return codec.RESULT_BAD_SETTING
            new[code] = value
        if new[codec.SET_LEAVE_MG] >= new[codec.SET_ENTER_MG]:
            return codec.RESULT_INCONSISTENT
        self._set(new)
        for code, _ in items:
            if code == codec.SET_HEARTBEAT_S:
                self.heartbeat_fixed = True
        return codec.RESULT_OK

    def _set(self, new: dict) -> None:
        self.heartbeat_s = new[codec.SET_HEARTBEAT_S]
        self.det.configure(
            new[codec.SET_ENTER_MG], new[codec.SET_LEAVE_MG], new[codec.SET_ENTER_SAMPLES],
            new[codec.SET_LEAVE_SAMPLES], new[codec.SET_SETTLE_MG])

    def snapshot(self) -> bytes:
        """What to keep in flash: settings, whether the heartbeat is fixed, the last command."""
        values = [v for _, v in self.settings()]
        return _MAGIC + struct.pack(_FORMAT, 1 if self.heartbeat_fixed else 0, self.last_tag,
                                    self.last_result, values[0], values[1], values[2],
                                    values[3], values[4], values[5])

    def restore(self, data: bytes) -> bool:
        """Load a snapshot(); False (nothing changed) when it is not a usable one."""
        if data[:4] != _MAGIC or len(data) != 4 + struct.calcsize(_FORMAT):
            return False
        fields = struct.unpack_from(_FORMAT, data, 4)
        new = {}
        for code in range(1, 7):
            value = fields[2 + code]
            bounds = codec.SETTING_BOUNDS[code]
            if value < bounds[0] or value > bounds[1]:
                return False
            new[code] = value
        if new[codec.SET_LEAVE_MG] >= new[codec.SET_ENTER_MG]:
            return False
        self._set(new)
        self.heartbeat_fixed = bool(fields[0])
        self.last_tag = fields[1]
        self.last_result = fields[2]
        return True
