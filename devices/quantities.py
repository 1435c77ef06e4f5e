"""The canonical data model: one name, one unit and one value kind per physical quantity.

Every device profile maps its vendor points onto these names, so downstream systems never see
vendor units or vendor enum codes. Enumerations carry the standard's integer codes on the wire
and in the store; their labels live here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class ValueKind(StrEnum):
    """How a quantity's value is represented on the wire."""

    NUMBER = "number"
    INTEGER = "integer"
    BOOL = "bool"
    ENUM = "enum"


@dataclass(frozen=True, slots=True)
class Quantity:
    """A canonical quantity: name, unit, UN/CEFACT unit code and value kind."""

    name: str
    kind: ValueKind
    unit: str = ""
    unit_code: str = ""
    description: str = ""
    labels: dict[int, str] = field(default_factory=dict)
    limits: tuple[int, int] | None = None  # inclusive range a value must lie in, if narrower

    def code_for(self, label: str) -> int:
        """Return the canonical integer code of an enum label."""
        for code, name in self.labels.items():
            if name == label:
                return code
        raise KeyError(f"{self.name} has no label {label!r}; known: {sorted(self.labels.values())}")


SERVICE_MODES = {
    0: "out_of_service",
    1: "normal",
    2: "inspection",
    3: "fire_return",
    4: "firefighter",
    5: "emergency_power",
    6: "earthquake",
    7: "unknown",
}
DIRECTIONS = {0: "none", 1: "up", 2: "down"}
POWER_SUPPLIES = {0: "mains", 1: "battery", 2: "none"}
PARKING_REPORT_TYPES = {1: "change", 2: "heartbeat", 3: "startup"}
# HJ 212 equipment running state (SBn-RS; fume platforms send 1 on / 0 off as ga0701/ga2101)
EQUIPMENT_STATES = {0: "off", 1: "running", 2: "calibrating", 3: "maintenance", 4: "alarm",
                    5: "blowback"}
RESET_CAUSES = {0: "unknown", 1: "power_on", 2: "hard_reset", 3: "watchdog",
                4: "deep_sleep_wake", 5: "soft_reset", 6: "brown_out", 7: "firmware_update"}

# Quantities the collector keeps in 32-bit INTEGER columns (parking spots) besides the readings.
_INT32 = (-(2**31), 2**31 - 1)

_Q = Quantity
_ALL: tuple[Quantity, ...] = (
    # Lifts (GB/T 24476 real-time items and common extras)
    _Q("service_mode", ValueKind.ENUM, description="Lift service mode", labels=SERVICE_MODES),
    _Q("car_running", ValueKind.BOOL, description="Car is running"),
    _Q("direction", ValueKind.ENUM, description="Direction of travel", labels=DIRECTIONS),
    _Q("floor", ValueKind.INTEGER, description="Car position (floor number)"),
    _Q("home_floor", ValueKind.INTEGER, description="Floor an idle car parks at (a setting)"),
    _Q("door_zone", ValueKind.BOOL, description="Car is in the unlocking / levelling zone"),
    _Q("door_closed", ValueKind.BOOL, description="Car door fully closed"),
    _Q("passenger_present", ValueKind.BOOL, description="Passenger detected in the car"),
    _Q("fault_code", ValueKind.INTEGER, description="GB/T 24476 fault/event code, 0 = none"),
    _Q("trip_count", ValueKind.INTEGER, description="Trip counter since commissioning"),
    _Q("running_hours", ValueKind.NUMBER, "h", "HUR", "Total running time"),
    _Q("speed", ValueKind.NUMBER, "m/s", "MTS", "Car speed"),
    _Q("power_supply", ValueKind.ENUM, description="Power supply", labels=POWER_SUPPLIES),
    _Q("door_lock", ValueKind.BOOL, description="Car and landing door locks closed"),
    _Q("safety_circuit", ValueKind.BOOL, description="Safety circuit closed"),
    _Q("alarm_button", ValueKind.BOOL, description="Alarm button pressed"),
    _Q("machine_room_temp", ValueKind.NUMBER, "°C", "CEL", "Machine-room temperature"),
    _Q("load_percent", ValueKind.NUMBER, "%", "P1", "Car load as share of rated load"),
    _Q("brake_open", ValueKind.BOOL, description="Brake lifted"),
    _Q("door_cycles", ValueKind.INTEGER, description="Door open/close cycle counter"),
    _Q("overload", ValueKind.BOOL, description="Car overloaded"),
    # Air and dust (HJ 212, ST=39 / 22)
    _Q("tsp", ValueKind.NUMBER, "µg/m³", "GQ", "Total suspended particulates"),
    _Q("pm10", ValueKind.NUMBER, "µg/m³", "GQ", "PM10"),
    _Q("pm2_5", ValueKind.NUMBER, "µg/m³", "GQ", "PM2.5"),
    _Q("pm1", ValueKind.NUMBER, "µg/m³", "GQ", "PM1.0"),
    _Q("noise_laeq", ValueKind.NUMBER, "dB(A)", "2N", "Equivalent continuous sound level"),
    _Q("wind_speed", ValueKind.NUMBER, "m/s", "MTS", "Wind speed"),
    _Q("wind_direction", ValueKind.NUMBER, "°", "DD", "Wind direction"),
    _Q("temperature", ValueKind.NUMBER, "°C", "CEL", "Air temperature"),
    _Q("humidity", ValueKind.NUMBER, "%", "P1", "Relative humidity"),
    _Q("pressure", ValueKind.NUMBER, "kPa", "KPA", "Air pressure"),
    # Boiler flue gas (HJ 212, ST=31); *_converted are referred to the reference O2.
    _Q("so2", ValueKind.NUMBER, "mg/m³", "GP", "SO2 concentration, measured"),
    _Q("so2_converted", ValueKind.NUMBER, "mg/m³", "GP", "SO2 at reference O2"),
    _Q("nox", ValueKind.NUMBER, "mg/m³", "GP", "NOx concentration, measured"),
    _Q("nox_converted", ValueKind.NUMBER, "mg/m³", "GP", "NOx at reference O2"),
    _Q("no", ValueKind.NUMBER, "mg/m³", "GP", "NO concentration"),
    _Q("no2", ValueKind.NUMBER, "mg/m³", "GP", "NO2 concentration"),
    _Q("co", ValueKind.NUMBER, "mg/m³", "GP", "CO concentration"),
    _Q("particulates", ValueKind.NUMBER, "mg/m³", "GP", "Flue particulates (烟尘), measured"),
    _Q("particulates_converted", ValueKind.NUMBER, "mg/m³", "GP", "Particulates at ref. O2"),
    _Q("o2", ValueKind.NUMBER, "%", "P1", "Flue O2"),
    _Q("flue_temp", ValueKind.NUMBER, "°C", "CEL", "Flue gas temperature"),
    _Q("flue_velocity", ValueKind.NUMBER, "m/s", "MTS", "Flue gas velocity"),
    _Q("flue_pressure", ValueKind.NUMBER, "kPa", "KPA", "Flue gas pressure"),
    _Q("flue_humidity", ValueKind.NUMBER, "%", "P1", "Flue gas humidity"),
    _Q("flue_flow", ValueKind.NUMBER, "m³/h", "MQH", "Flue gas flow"),
    # Restaurant cooking-fume monitors (饮食业油烟在线监控, HJ 212 with platform codes)
    _Q("cooking_fume", ValueKind.NUMBER, "mg/m³", "GP", "Cooking fume (油烟) concentration"),
    _Q("nmhc", ValueKind.NUMBER, "mg/m³", "GP", "Non-methane hydrocarbons"),
    _Q("purifier_current", ValueKind.NUMBER, "A", "AMP", "Fume purifier current"),
    _Q("purifier_voltage", ValueKind.NUMBER, "V", "VLT", "Fume purifier voltage"),
    _Q("purifier_state", ValueKind.ENUM, description="Fume purifier running state",
       labels=EQUIPMENT_STATES),
    _Q("fan_current", ValueKind.NUMBER, "A", "AMP", "Exhaust fan current"),
    _Q("fan_voltage", ValueKind.NUMBER, "V", "VLT", "Exhaust fan voltage"),
    _Q("fan_state", ValueKind.ENUM, description="Exhaust fan running state",
       labels=EQUIPMENT_STATES),
    # Vehicles reporting their position (muck trucks)
    _Q("latitude", ValueKind.NUMBER, "°", "DD", "WGS-84 latitude", limits=(-90, 90)),
    _Q("longitude", ValueKind.NUMBER, "°", "DD", "WGS-84 longitude", limits=(-180, 180)),
    _Q("vehicle_speed", ValueKind.NUMBER, "km/h", "KMH", "Vehicle speed over ground",
       limits=(0, 500)),
    # Parking sensors
    _Q("occupied", ValueKind.BOOL, description="Parking space occupied"),
    _Q("battery_mv", ValueKind.INTEGER, "mV", "2Z", "Battery voltage", limits=_INT32),
    _Q("rssi", ValueKind.INTEGER, "dBm", "DBM", "Received signal strength", limits=_INT32),
    _Q("mag_x", ValueKind.INTEGER, description="Raw magnetometer X"),
    _Q("mag_y", ValueKind.INTEGER, description="Raw magnetometer Y"),
    _Q("mag_z", ValueKind.INTEGER, description="Raw magnetometer Z"),
    _Q("report_type", ValueKind.ENUM, description="Why a parking sensor reported",
       labels=PARKING_REPORT_TYPES),
    _Q("send_counter", ValueKind.INTEGER, description="Parking sensor report counter (wraps)"),
    _Q("park_counter", ValueKind.INTEGER, description="Vehicle arrivals counted by the sensor"),
    _Q("reset_cause", ValueKind.ENUM, description="Cause of the sensor's last reset",
       labels=RESET_CAUSES),
)

QUANTITIES: dict[str, Quantity] = {q.name: q for q in _ALL}


def quantity(name: str) -> Quantity:
    """Return the canonical quantity of this name, or raise KeyError naming the known ones."""
    try:
        return QUANTITIES[name]
    except KeyError:
        raise KeyError(f"unknown canonical quantity {name!r}") from None
