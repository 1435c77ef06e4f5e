"""Vehicle detection from a 3-axis magnetometer (pure; MicroPython and CPython).

A parked car bends the earth's field at the sensor by tens to hundreds of mG. The detector
compares each sample with a tracked empty-bay baseline:

* delta = |sample - expected|, expected = baseline + temperature term (tc per axis, set per
  node at calibration; the magnetometer's offset drifts with temperature, and the baseline is
  frozen while a car stands on the sensor, possibly for days).
* arrive: delta >= enter_mg for enter_samples consecutive samples AND the last enter_samples
  samples agree within settle_mg (the car stands still). Passing cars never settle, a single
  interference spike never lasts, a neighbour's car shifts the field by less than enter_mg.
* leave: delta < leave_mg for leave_samples consecutive samples (hysteresis: leave < enter).
* swap: while occupied, the field dipped towards the baseline and then settled at a signature
  at least swap_mg away from the parked car's: a fast car swap that leave_samples would miss.
* drift: while free and delta < drift_gate_mg, the baseline follows with an exponential moving
  average (alpha = 2**-drift_shift per sample), so hours-long drift is absorbed but a car is not.

All arithmetic is on ints (the baseline is fixed point, x256) so MicroPython's single
precision floats and CPython give identical decisions.
"""

import struct

EVENT_NONE = 0
EVENT_ARRIVE = 1
EVENT_LEAVE = 2
EVENT_SWAP = 3  # the parked car left and another one arrived: report free, then occupied

_FP = 256  # fixed-point scale of the baseline
_SNAPSHOT_VERSION = 1
_SNAPSHOT_HEAD = ">BB3ihBHHB3hB"


class Detector:
    """Occupancy state machine fed one magnetometer sample (mG) at a time."""

    def __init__(
        self,
        enter_mg: int = 60,
        leave_mg: int = 35,
        enter_samples: int = 3,
        leave_samples: int = 3,
        settle_mg: int = 14,
        swap_mg: int = 60,
        drift_gate_mg: int = 25,
        drift_shift: int = 8,
        tc_centi_mg_per_c: tuple = (0, 0, 0),
    ) -> None:
        self._thresholds(enter_mg, leave_mg, enter_samples, leave_samples, settle_mg)
        self.swap_mg = swap_mg
        self.drift_gate_mg = drift_gate_mg
        self.drift_shift = drift_shift
        self.tc = tc_centi_mg_per_c  # mG per degC x100, per axis
        self.calibrated = False
        self.occupied = False
        self._base = [0, 0, 0]  # empty-bay field at _base_temp, x _FP
        self._base_temp = 0  # 0.1 degC
        self._temp = 0
        self._run = 0  # consecutive samples at or above enter_mg
        self._leave_run = 0  # consecutive samples below leave_mg while occupied
        self._dipped = False  # occupied, and the field went back near the baseline
        self._signature = [0, 0, 0]  # settled field of the parked car
        self._window: list = []  # last enter_samples samples, oldest first
        self.last_delta2 = 0

    def configure(self, enter_mg: int, leave_mg: int, enter_samples: int, leave_samples: int,
                  settle_mg: int) -> None:
        """Change the thresholds (a remote command); baseline and occupancy are kept, the
        runs in progress start again."""
        self._thresholds(enter_mg, leave_mg, enter_samples, leave_samples, settle_mg)
        self._reset_runs()

    def _thresholds(self, enter_mg: int, leave_mg: int, enter_samples: int,
                    leave_samples: int, settle_mg: int) -> None:
        if not 0 < leave_mg < enter_mg:
            raise ValueError("need 0 < leave_mg < enter_mg")
        if enter_samples < 1 or leave_samples < 1:
            raise ValueError("enter_samples and leave_samples must be >= 1")
        self.enter_mg = enter_mg
        self.leave_mg = leave_mg
        self.enter_samples = enter_samples
        self.leave_samples = leave_samples
        self.settle_mg = settle_mg

    def calibrate(self, x: int, y: int, z: int, temp_dc: int) -> None:
        """Declare the bay empty with this field as the baseline."""
        self._base = [x * _FP, y * _FP, z * _FP]
        self._base_temp = temp_dc
        self._temp = temp_dc
        self.calibrated = True
        self.occupied = False
        self._reset_runs()

    def baseline(self) -> tuple:
        """Expected empty-bay field (mG) at the last sample's temperature."""
        return self._expected(self._temp)

    def _expected(self, temp_dc: int) -> tuple:
        dt = temp_dc - self._base_temp
        tc = self.tc
        return (
            _round_div(self._base[0] + tc[0] * dt * _FP // 1000, _FP),
            _round_div(self._base[1] + tc[1] * dt * _FP // 1000, _FP),
            _round_div(self._base[2] + tc[2] * dt * _FP // 1000, _FP),
        )

    def _reset_runs(self) -> None:
        self._run = 0
        self._leave_run = 0
        self._dipped = False
        self._window = []

    def update(self, x: int, y: int, z: int, temp_dc: int) -> int:
        """Feed one sample (mG, 0.1 degC); return an EVENT_* code."""
        if not self.calibrated:
            self.calibrate(x, y, z, temp_dc)
            return EVENT_NONE
        self._temp = temp_dc
        ex, ey, ez = self._expected(temp_dc)
        dx, dy, dz = x - ex, y - ey, z - ez
        d2 = dx * dx + dy * dy + dz * dz
        self.last_delta2 = d2
        self._window.append((x, y, z))
        if len(self._window) > self.enter_samples:
            self._window.pop(0)
        self._run = self._run + 1 if d2 >= self.enter_mg * self.enter_mg else 0
        if self.occupied:
            return self._update_occupied(d2)
        return self._update_free(x, y, z, d2, temp_dc)

    def _update_free(self, x: int, y: int, z: int, d2: int, temp_dc: int) -> int:
        if self._run >= self.enter_samples and self._settled():
            self.occupied = True
            self._signature = self._window_mean()
            self._leave_run = 0
            self._dipped = False
            return EVENT_ARRIVE
        if d2 < self.drift_gate_mg * self.drift_gate_mg:
            self._track(x, y, z, temp_dc)
        return EVENT_NONE

    def _track(self, x: int, y: int, z: int, temp_dc: int) -> None:
        # The EMA follows the temperature-normalised field, so _base stays referred to
        # _base_temp and the temperature term is never folded in (no rounding creep).
        dt = temp_dc - self._base_temp
        shift = self.drift_shift
        for axis, value in enumerate((x, y, z)):
            target = value * _FP - self.tc[axis] * dt * _FP // 1000
            self._base[axis] += _round_div(target - self._base[axis], 1 << shift)

    def _update_occupied(self, d2: int) -> int:
        if d2 < self.leave_mg * self.leave_mg:
            self._dipped = True
            self._leave_run += 1
            if self._leave_run >= self.leave_samples:
                self.occupied = False
                self._reset_runs()
                return EVENT_LEAVE
            return EVENT_NONE
        self._leave_run = 0
        if self._run < self.enter_samples or not self._settled():
            return EVENT_NONE
        mean = self._window_mean()
        moved = _dist2(mean, self._signature) >= self.swap_mg * self.swap_mg
        if self._dipped and moved:
            self._signature = mean
            self._dipped = False
            return EVENT_SWAP
        if not moved:
            self._dipped = False  # back on the same car: the dip was a spike or a door
        return EVENT_NONE

    def _settled(self) -> bool:
        window = self._window
        if len(window) < self.enter_samples:
            return False
        for axis in range(3):
            low = high = window[0][axis]
            for sample in window:
                value = sample[axis]
                low = min(low, value)
                high = max(high, value)
            if high - low > self.settle_mg:
                return False
        return True

    def _window_mean(self) -> list:
        n = len(self._window)
        return [_round_div(sum(s[axis] for s in self._window), n) for axis in range(3)]

    def snapshot(self) -> bytes:
        """State as bytes, to keep in RTC memory across deep sleep."""
        head = struct.pack(
            _SNAPSHOT_HEAD,
            _SNAPSHOT_VERSION,
            (1 if self.calibrated else 0) | (2 if self.occupied else 0),
            self._base[0], self._base[1], self._base[2],
            self._base_temp,
            1 if self._dipped else 0,
            min(self._run, 0xFFFF),
            min(self._leave_run, 0xFFFF),
            0,
            self._signature[0], self._signature[1], self._signature[2],
            len(self._window),
        )
        tail = b"".join(struct.pack(">3h", s[0], s[1], s[2]) for s in self._window)
        return head + tail

    def restore(self, data: bytes) -> bool:
        """Load a snapshot() taken with the same settings; False (state untouched) if unusable."""
        size = struct.calcsize(_SNAPSHOT_HEAD)
        if len(data) < size or data[0] != _SNAPSHOT_VERSION:
            return False
        fields = struct.unpack_from(_SNAPSHOT_HEAD, data)
        count = fields[13]
        if count > self.enter_samples or len(data) != size + 6 * count:
            return False
        flags = fields[1]
        self.calibrated = bool(flags & 1)
        self.occupied = bool(flags & 2)
        self._base = [fields[2], fields[3], fields[4]]
        self._base_temp = fields[5]
        self._temp = fields[5]
        self._dipped = bool(fields[6])
        self._run = fields[7]
        self._leave_run = fields[8]
        self._signature = [fields[10], fields[11], fields[12]]
        self._window = [
            struct.unpack_from(">3h", data, size + 6 * i) for i in range(count)
        ]
        return True


def _round_div(num: int, den: int) -> int:
    """num / den rounded half away from zero, identical on MicroPython and CPython."""
    if num >= 0:
        return (num + den // 2) // den
    return -((-num + den // 2) // den)


def _dist2(a: list, b: list) -> int:
    dx, dy, dz = a[0] - b[0], a[1] - b[1], a[2] - b[2]
    return dx * dx + dy * dy + dz * dz
