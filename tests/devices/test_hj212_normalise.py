"""HJ 212 frames → canonical Readings: units, flags → quality, 2005 codes, Zs, periods."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from devices.hj212 import build, parse
from devices.hj212.normalise import (
    Interval,
    flag_quality,
    normalise,
    series_id,
    split_series_id,
)
from devices.model import Quality, Reading
from devices.profiles import ProfileError, load_profile
from devices.profiles.loader import _build

DUST = load_profile("dust-hj212")
DUST_MG = load_profile("dust-hj212-mg")
BOILER = load_profile("boiler-hj212")
MN = "010000A8900016F000169DC0"
RX = 1_700_000_000_000
# 2024-05-01 10:00:00 at +08:00 is 02:00 UTC.
TS = int(datetime(2024, 5, 1, 2, 0, tzinfo=UTC).timestamp() * 1000)


def frame(cn: str, cp: dict[str, str], st: str = "39", flag: int | None = 4) -> bytes:
    """A frame as a logger would send it."""
    return build(qn="20240501100000000", st=st, cn=cn, pw="123456", mn=MN, flag=flag,
                 cp={"DataTime": "20240501100000", **cp})


def by_quality(readings: list[Reading]) -> dict[Quality, Reading]:
    """Readings keyed by quality (each test frame has one flag per quality)."""
    out = {r.quality: r for r in readings}
    assert len(out) == len(readings)
    return out


def test_dust_realtime_values_get_canonical_names_units_and_station_time() -> None:
    raw = frame("2011", {"a34001-Rtd": "120.5", "a34001-Flag": "N",
                         "a34002-Rtd": "85", "a34002-Flag": "N",
                         "a34004-Rtd": "40.2", "a34004-Flag": "N",
                         "a50001-Rtd": "62.3", "a50001-Flag": "N",
                         "a01007-Rtd": "2.4", "a01008-Rtd": "270", "a01001-Rtd": "21.5",
                         "a01002-Rtd": "45"})
    out = normalise(parse(raw), DUST, "dust-1", received_ms=RX, mono=5)
    assert out.interval is Interval.REALTIME
    assert out.unknown_codes == ()
    values = {k: v for r in out.readings for k, v in r.values.items()}
    assert values == {"tsp": 120.5, "pm10": 85.0, "pm2_5": 40.2, "noise_laeq": 62.3,
                      "wind_speed": 2.4, "wind_direction": 270.0, "temperature": 21.5,
                      "humidity": 45.0}
    for r in out.readings:
        assert (r.device, r.ts, r.mono) == ("dust-1", TS, 5)
    # No flag on the weather values: a separate GOOD reading without source flag.
    flags = sorted((r.source_flag or "-") for r in out.readings)
    assert flags == ["-", "N"]
    assert all(r.quality is Quality.GOOD for r in out.readings)


def test_mg_per_m3_device_is_scaled_to_micrograms() -> None:
    raw = frame("2011", {"a34002-Rtd": "0.085", "a34002-Flag": "N", "a34004-Rtd": "0.0412"})
    out = normalise(parse(raw), DUST_MG, "dust-2", received_ms=RX)
    values = {k: v for r in out.readings for k, v in r.values.items()}
    assert values == {"pm10": 85.0, "pm2_5": 41.2}


@pytest.mark.parametrize(("flag", "quality"), [
    ("N", Quality.GOOD),
    ("C", Quality.UNCERTAIN), ("M", Quality.UNCERTAIN), ("S", Quality.UNCERTAIN),
    ("D", Quality.BAD), ("F", Quality.BAD), ("T", Quality.BAD), ("B", Quality.BAD),
    ("X", Quality.UNCERTAIN), (None, Quality.GOOD),
])
def test_data_flags_map_to_quality(flag: str | None, quality: Quality) -> None:
    assert flag_quality(flag) is quality


def test_values_are_grouped_per_flag_with_the_same_timestamp() -> None:
    raw = frame("2011", {"a34001-Rtd": "120", "a34001-Flag": "N",
                         "a34002-Rtd": "999", "a34002-Flag": "D",
                         "a34004-Rtd": "40", "a34004-Flag": "C",
                         "a34005-Rtd": "20", "a34005-Flag": "N"})
    out = normalise(parse(raw), DUST, "dust-1", received_ms=RX)
    q = by_quality(out.readings)
    assert q[Quality.GOOD].values == {"tsp": 120.0, "pm1": 20.0}
    assert (q[Quality.BAD].values, q[Quality.BAD].source_flag) == ({"pm10": 999.0}, "D")
    assert (q[Quality.UNCERTAIN].values, q[Quality.UNCERTAIN].source_flag) == \
        ({"pm2_5": 40.0}, "C")
    assert {r.ts for r in out.readings} == {TS}
    assert q[Quality.BAD].to_wire()["q"] == "bad"
    assert q[Quality.BAD].to_wire()["flag"] == "D"


def test_boiler_measured_and_converted_values_go_to_distinct_quantities() -> None:
    raw = frame("2011", {"a21002-Rtd": "20.0", "a21002-ZsRtd": "26.9", "a21002-Flag": "N",
                         "a21026-Rtd": "5", "a21026-ZsRtd": "6.7", "a21026-Flag": "N",
                         "a34013-Rtd": "3.1", "a34013-ZsRtd": "4.2", "a34013-Flag": "N",
                         "a19001-Rtd": "8.0", "a19001-Flag": "N",
                         "a01012-Rtd": "95.5", "a00000-Rtd": "2.5", "a21005-Rtd": "12"},
                st="31")
    out = normalise(parse(raw), BOILER, "boiler-1", received_ms=RX)
    values = {k: v for r in out.readings for k, v in r.values.items()}
    assert values == {"nox": 20.0, "nox_converted": 26.9, "so2": 5.0, "so2_converted": 6.7,
                      "particulates": 3.1, "particulates_converted": 4.2, "o2": 8.0,
                      "flue_temp": 95.5, "flue_flow": 9000.0, "co": 12.0}


def test_2005_codes_without_qn_or_flag_and_with_millisecond_datatime() -> None:
    raw = build(st="31", cn="2011", pw="", mn=MN, cp={
        "DataTime": "20240501100000123", "01-Rtd": "15.2", "01-ZsRtd": "20.1", "01-Flag": "N",
        "02-Rtd": "10", "02-Flag": "N", "03-Rtd": "31.5", "03-ZsRtd": "42.4", "03-Flag": "N",
        "S01-Rtd": "8.5", "S03-Rtd": "120", "B02-Rtd": "1.5", "S08-Rtd": "0.12",
        "S05-Rtd": "9.5", "S02-Rtd": "6.2", "04-Rtd": "3"})
    f = parse(raw)
    assert f.qn is None and f.flag is None
    out = normalise(f, BOILER, "boiler-1", received_ms=RX)
    values = {k: v for r in out.readings for k, v in r.values.items()}
    assert values == {"particulates": 15.2, "particulates_converted": 20.1, "so2": 10.0,
                      "nox": 31.5, "nox_converted": 42.4, "o2": 8.5, "flue_temp": 120.0,
                      "flue_flow": 5400.0, "flue_pressure": 0.12, "flue_humidity": 9.5,
                      "flue_velocity": 6.2, "co": 3.0}
    assert {r.ts for r in out.readings} == {TS + 123}


@pytest.mark.parametrize(("cn", "interval", "series"), [
    ("2011", Interval.REALTIME, "dust-1"),
    ("2051", Interval.MINUTE, "dust-1:min"),
    ("2061", Interval.HOUR, "dust-1:hour"),
    ("2031", Interval.DAY, "dust-1:day"),
])
def test_realtime_minute_hourly_and_daily_data_are_told_apart(
        cn: str, interval: Interval, series: str) -> None:
    cp = {"a34002-Rtd": "50", "a34002-Avg": "60", "a34002-Min": "40", "a34002-Max": "90",
          "a34002-Flag": "N"}
    out = normalise(parse(frame(cn, cp)), DUST, "dust-1", received_ms=RX)
    assert out.interval is interval
    assert [r.device for r in out.readings] == [series]
    assert out.readings[0].values == {"pm10": 50.0 if cn == "2011" else 60.0}
    assert split_series_id(series) == ("dust-1", interval)
    assert series_id("dust-1", interval) == series
    assert out.ignored == 3  # the other value suffixes


def test_zs_average_of_hourly_boiler_data() -> None:
    raw = frame("2061", {"a21002-Avg": "22", "a21002-ZsAvg": "31", "a21002-Flag": "N"}, st="31")
    out = normalise(parse(raw), BOILER, "b", received_ms=RX)
    assert out.readings[0].values == {"nox": 22.0, "nox_converted": 31.0}
    assert out.readings[0].device == "b:hour"


def test_unknown_codes_bad_numbers_and_non_data_commands() -> None:
    raw = frame("2011", {"w01018-Rtd": "3", "a34002-Rtd": "n/a", "a34001-Rtd": "7",
                         "a34001-ZsRtd": "8"})
    out = normalise(parse(raw), DUST, "d", received_ms=RX)
    assert out.unknown_codes == ("w01018",)
    assert out.bad_values == 1
    assert out.ignored == 1  # dust has no converted quantity for TSP
    assert out.values == 1
    for cn in ("9011", "2081", "8013", "1062"):
        assert normalise(parse(frame(cn, {"a34002-Rtd": "1"})), DUST, "d",
                         received_ms=RX).readings == []


def test_frame_without_datatime_takes_the_receive_time() -> None:
    raw = build(st="39", cn="2011", pw="1", mn=MN, flag=4, cp={"a34002-Rtd": "5"})
    assert normalise(parse(raw), DUST, "d", received_ms=RX).readings[0].ts == RX


def test_series_id_of_a_device_id_with_a_colon_is_unambiguous() -> None:
    assert split_series_id("urn:x:dust") == ("urn:x:dust", Interval.REALTIME)
    assert split_series_id("urn:x:dust:hour") == ("urn:x:dust", Interval.HOUR)


@pytest.mark.parametrize(("codes", "message"), [
    ('[codes.a34002]\nquantity = "pm10"\nunit = "ppm"', "no known conversion"),
    ('[codes.a34002]\nquantity = "pm10"\nunit = "mg/m³"\nfactor = 100', "does not convert"),
    ('[codes.a34002]\nquantity = "pm_10"', "not a canonical quantity"),
    ('[codes.a21002]\nquantity = "nox"\nconverted = "pm10"', "converted"),
    ('[codes.a21002]\nquantity = "nox"\naliases = ["03"]\n[codes."03"]\nquantity = "nox"',
     "mapped twice"),
    ("", "needs a [codes] table"),
])
def test_bad_code_tables_are_rejected_naming_the_key(codes: str, message: str) -> None:
    import tomllib

    text = f'name = "x"\nkind = "dust_monitor"\nprotocol = "hj212"\n{codes}\n'
    with pytest.raises(ProfileError, match=r"x\.toml") as info:
        _build(Path("x.toml"), tomllib.loads(text))
    assert message in str(info.value)


@pytest.mark.parametrize("data_time", ["19691231235959", "20241341000000", "2024", "1970010100"
                                       "0000"])
def test_data_time_that_is_no_time_after_1970_rejects_the_frame(data_time: str) -> None:
    raw = build(qn="1", st="39", cn="2011", pw="1", mn=MN, flag=4,
                cp={"DataTime": data_time, "a34002-Rtd": "85"})
    out = normalise(parse(raw), DUST, "dust-1", received_ms=RX)
    # 1970-01-01 00:00 at +08:00 is still 1969 in UTC
    assert (out.interval, out.readings, out.rejected) == (Interval.REALTIME, [], "bad_time")


def test_frame_without_data_time_takes_the_receive_time() -> None:
    raw = build(qn="1", st="39", cn="2011", pw="1", mn=MN, flag=4, cp={"a34002-Rtd": "85"})
    out = normalise(parse(raw), DUST, "dust-1", received_ms=RX)
    assert [(r.ts, r.values) for r in out.readings] == [(RX, {"pm10": 85.0})]


def test_over_long_flags_keep_their_values_as_uncertain_without_the_flag() -> None:
    out = normalise(parse(frame("2011", {"a34002-Rtd": "85", "a34002-Flag": "NNNNNNNNN",
                                         "a34004-Rtd": "40", "a34004-Flag": "X\x00"})),
                    DUST, "dust-1", received_ms=RX)
    assert [(r.values, r.quality, r.source_flag) for r in out.readings] == [
        ({"pm10": 85.0, "pm2_5": 40.0}, Quality.UNCERTAIN, None)]
    assert out.bad_flags == ("NNNNNNNNN", "X\x00")


def test_values_not_finite_once_converted_are_bad_values() -> None:
    out = normalise(parse(frame("2011", {"a34002-Rtd": "1e308"})), DUST_MG, "dust-1",
                    received_ms=RX)
    assert (out.readings, out.bad_values) == ([], 1)
