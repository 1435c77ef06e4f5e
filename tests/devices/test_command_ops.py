"""The operation table of device commands, the HJ 212 exchange (sans-IO) and the station
simulator's answers to the platform's requests."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import pytest

from devices.commands import MAX_HISTORY_MS, OPS, ArgsRefused, check_args
from devices.hj212 import Frame, StreamDecoder, parse
from devices.hj212.exchange import Exchange, from_local_time, local_time, request
from devices.sim.environment import SimStats, StationSim, _schedule, build_parser
from tests.edge.test_hj212_source import until

MN = "DUST0000000000000000001A"
T = 1_764_000_000_000  # 2025-11-24T16:00:00Z
DAY = 86_400_000


def test_every_operation_names_its_kinds_and_a_check() -> None:
    assert set(OPS) >= {"write", "set_time", "request_history", "read_params"}
    assert OPS["write"].kinds is None  # the profile's write tables decide
    for op in ("set_time", "request_history", "read_params"):
        assert OPS[op].kinds == {"dust_monitor", "boiler_cems", "fume_monitor"}


def test_write_arguments_are_left_to_the_profile_check() -> None:
    args = {"point": "home_floor", "value": 5}
    assert check_args("write", "elevator", args) == args


@pytest.mark.parametrize(("args", "canonical"), [
    ({"cn": "2051", "begin": T, "end": T + 3_600_000},
     {"cn": "2051", "begin": T, "end": T + 3_600_000}),
    ({"cn": 2061, "begin": "2025-11-24T16:00:00Z", "end": "2025-11-24T18:00:00+00:00"},
     {"cn": "2061", "begin": T, "end": T + 7_200_000}),
    ({"cn": "2031", "begin": str(T), "end": "2025-11-24T16:00:00"},  # no offset: UTC
     {"cn": "2031", "begin": T, "end": T}),
])
def test_history_arguments_become_canonical(args: dict[str, object],
                                            canonical: dict[str, object]) -> None:
    assert check_args("request_history", "dust_monitor", args) == canonical
    assert check_args("request_history", None, canonical) == canonical  # idempotent


@pytest.mark.parametrize(("args", "says"), [
    ({"cn": "2011", "begin": T, "end": T}, "cn must be one of"),
    ({"cn": ["2051"], "begin": T, "end": T}, "cn must be one of"),
    ({"cn": "2051", "begin": T, "end": T + MAX_HISTORY_MS + 1}, "at most 7 days"),
    ({"cn": "2051", "begin": T, "end": T - 1}, "end is before begin"),
    ({"cn": "2051", "begin": "yesterday", "end": T}, "neither epoch milliseconds"),
    ({"cn": "2051", "begin": 1.5e12, "end": T}, "epoch milliseconds or an ISO"),
    ({"cn": "2051", "begin": True, "end": T}, "epoch milliseconds or an ISO"),
    ({"cn": "2051", "begin": 5 * 10**14, "end": T}, "between 2000 and 2100"),
    ({"cn": "2051", "begin": "x" * 5000, "end": T}, "epoch milliseconds or an ISO"),
    ({"cn": "2051", "end": T}, "begin is required"),
    ({"cn": "2051", "begin": T, "end": T, "extra": 1}, "unknown argument"),
])
def test_hostile_history_arguments_are_refused_with_a_reason(args: dict[str, object],
                                                             says: str) -> None:
    with pytest.raises(ArgsRefused, match=says) as exc:
        check_args("request_history", "dust_monitor", args)
    assert exc.value.reason == "bad_args"
    assert len(exc.value.message) < 200


def test_set_time_and_read_params_arguments() -> None:
    assert check_args("set_time", "boiler_cems", {}) == {}
    assert check_args("set_time", "boiler_cems", {"time": "2025-11-24T16:00:00Z"}) == \
        {"time": T}
    assert check_args("read_params", "dust_monitor", {}) == {"params": ["rtd_interval", "time"]}
    assert check_args("read_params", "dust_monitor", {"params": "time"}) == {"params": ["time"]}
    bads: list[dict[str, object]] = [{"params": ["password"]}, {"params": []}, {"params": 5}]
    for bad in bads:
        with pytest.raises(ArgsRefused, match="params must name"):
            check_args("read_params", "dust_monitor", bad)
    with pytest.raises(ArgsRefused, match="between 2000 and 2100"):
        check_args("set_time", "dust_monitor", {"time": 0})


def test_unknown_operations_and_wrong_device_kinds_are_unsupported() -> None:
    for op, kind in (("reboot", "dust_monitor"), ("set_time", "elevator"),
                     ("x" * 10_000, None), ("Write", None)):
        with pytest.raises(ArgsRefused) as exc:
            check_args(op, kind, {})
        assert exc.value.reason == "unsupported_operation"
        assert len(exc.value.message) < 300
    with pytest.raises(ArgsRefused, match="bounded JSON object"):
        check_args("set_time", None, ["not", "a", "dict"])


def test_station_local_times_round_trip() -> None:
    assert local_time(T, 480) == "20251125000000"
    assert from_local_time("20251125000000", 480) == T
    assert from_local_time("20251125000000123", 480) == T + 123
    assert from_local_time("20251341000000", 480) is None
    assert from_local_time("2025", 480) is None


def frame(qn: str, cn: str, cp: dict[str, str]) -> Frame:
    return parse(request(qn=qn, st="91", cn=cn, pw="123456", mn=MN, cp=cp))


def test_an_exchange_takes_only_frames_of_its_qn_and_counts_history_in_range() -> None:
    ex = Exchange(qn="20251125000000001", cn="2051", history=(T, T + 120_000),
                  utc_offset_minutes=480)
    assert ex.feed(frame("20251125000000999", "9011", {"QnRtn": "1"})) == "no"
    assert ex.feed(frame("20251125000000001", "9011", {"QnRtn": "1"})) == "answer"
    assert not ex.finished
    assert ex.feed(frame("x1", "2051", {"DataTime": "20251125000100"})) == "data"
    assert ex.feed(frame("x2", "2051", {"DataTime": "20251125001000"})) == "no"  # outside
    assert ex.feed(frame("20251125000000001", "9012", {"ExeRtn": "1"})) == "answer"
    assert ex.finished and ex.frames == 1 and ex.exe_rtn == 1
    refused = Exchange(qn="q", cn="1011")
    refused.feed(frame("q", "9011", {"QnRtn": "3"}))
    assert refused.finished and refused.qn_rtn == 3
    junk = Exchange(qn="q", cn="1011")
    junk.feed(frame("q", "9011", {"QnRtn": "x" * 50}))
    assert junk.qn_rtn == -1 and junk.finished


NOW = datetime(2025, 11, 24, 16, 0, 30, tzinfo=UTC)


def sim(**kw: object) -> StationSim:
    return StationSim(kind="dust", mn=MN, rng=random.Random(1), seed=3, **kw)  # type: ignore[arg-type]


def answers(station: StationSim, cn: str, cp: dict[str, str], pw: str = "123456",
            now: datetime = NOW) -> list[Frame]:
    req = parse(request(qn="20251125000030123", st="39", cn=cn, pw=pw, mn=MN, cp=cp))
    return [f for f in StreamDecoder().feed(b"".join(station.answer(req, now)))
            if isinstance(f, Frame)]


def test_the_simulator_answers_time_interval_and_a_wrong_password() -> None:
    station = sim(rtd_interval=30)
    got = answers(station, "1011", {})
    assert [(f.cn, f.qn) for f in got] == [
        ("9011", "20251125000030123"), ("1011", "20251125000030123"),
        ("9012", "20251125000030123")]
    assert got[0].cp == {"QnRtn": "1"} and got[1].cp == {"SystemTime": "20251125000030"}
    assert [f.cp for f in answers(station, "1061", {})][1] == {"RtdInterval": "30"}
    wrong = answers(station, "1011", {}, pw="000000")
    assert [(f.cn, f.cp) for f in wrong] == [("9011", {"QnRtn": "3"})]
    other = parse(request(qn="q", st="39", cn="1011", pw="123456", mn="OTHER", cp={}))
    assert station.answer(other, NOW) == []


def test_setting_the_time_moves_every_later_data_time() -> None:
    station = sim()
    got = answers(station, "1012", {"SystemTime": "20251125010030"})  # one hour ahead
    assert [(f.cn, f.cp) for f in got] == [("9011", {"QnRtn": "1"}), ("9012", {"ExeRtn": "1"})]
    assert station.clock_offset_s == 3600
    assert answers(station, "1011", {})[1].cp == {"SystemTime": "20251125010030"}
    rt = parse(station.frames("2011", NOW)[0])
    assert rt.cp["DataTime"] == "20251125010030"
    bad = answers(station, "1012", {"SystemTime": "tomorrow"})
    assert bad[-1].cp == {"ExeRtn": "3"}


def test_history_sends_the_remembered_frames_of_the_range_then_9012() -> None:
    station = sim(history_size=5)
    sent = {}
    for minute in range(8):
        at = NOW.replace(minute=minute)
        sent[minute] = station.frames("2051", at)
    assert len(station.history) == 5  # bounded: minutes 3..7 are remembered
    got = answers(station, "2051", {"BeginTime": "20251125000200",
                                     "EndTime": "20251125000500"})
    assert [f.cn for f in got] == ["9011", "2051", "2051", "2051", "9012"]
    assert [f.cp["DataTime"] for f in got[1:4]] == [
        "20251125000300", "20251125000400", "20251125000500"]
    assert got[1] == parse(sent[3][0])  # the very frame it generated
    again = sim().frames("2051", NOW.replace(minute=4))
    assert again == sent[4]  # averaged data is a function of seed, MN and DataTime
    none = answers(station, "2061", {"BeginTime": "20251125000000",
                                     "EndTime": "20251125010000"})
    assert [(f.cn, f.cp) for f in none][-1] == ("9012", {"ExeRtn": "100"})


@pytest.mark.parametrize(("given", "canonical"), [
    ({"rtd_interval": 60}, {"rtd_interval": 60}), ({"rtd_interval": "10"}, {"rtd_interval": 10}),
    ({"rtd_interval": 3600}, {"rtd_interval": 3600})])
def test_the_real_time_interval_is_whole_seconds_within_bounds(
        given: dict[str, object], canonical: dict[str, object]) -> None:
    assert check_args("set_rtd_interval", "boiler_cems", given) == canonical


@pytest.mark.parametrize("given", [
    {}, {"rtd_interval": 9}, {"rtd_interval": 3601}, {"rtd_interval": True},
    {"rtd_interval": 30.5}, {"rtd_interval": "1e3"}, {"rtd_interval": "9" * 40},
    {"rtd_interval": 30, "other": 1}])
def test_a_real_time_interval_out_of_bounds_is_refused(given: dict[str, object]) -> None:
    with pytest.raises(ArgsRefused) as refused:
        check_args("set_rtd_interval", "dust_monitor", given)
    assert refused.value.reason == "bad_args"
    with pytest.raises(ArgsRefused) as other:
        check_args("set_rtd_interval", "elevator", {"rtd_interval": 60})
    assert other.value.reason == "unsupported_operation"


def test_the_simulator_sets_its_real_time_interval() -> None:
    station = sim(rtd_interval=30)
    got = answers(station, "1062", {"RtdInterval": "120"})
    assert [(f.cn, f.cp) for f in got] == [("9011", {"QnRtn": "1"}), ("9012", {"ExeRtn": "1"})]
    assert (station.rtd_interval, station.rtd_interval_set) == (120, True)
    assert [f.cp for f in answers(station, "1061", {})][1] == {"RtdInterval": "120"}
    for bad in ("0", "x", "99999999", ""):
        assert answers(station, "1062", {"RtdInterval": bad})[-1].cp == {"ExeRtn": "3"}
    assert station.rtd_interval == 120


def test_the_simulator_schedule_follows_a_new_real_time_interval() -> None:
    async def scenario() -> None:
        station = sim(rtd_interval=3600)
        args = build_parser().parse_args(["--kind", "dust", "--mn", MN, "--pty", "/x",
                                          "--interval", "1h"])
        stats, stop = SimStats(station), asyncio.Event()
        sent: list[bytes] = []
        stats.write = sent.append
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(_schedule(station, sent.append, args, stats, stop))
        await until(lambda: stats.uploads == 1 and stats.rtd_every == 3600, what="1st upload")
        stats.received(request(qn="20251125000030123", st="39", cn="1062", pw="123456",
                               mn=MN, cp={"RtdInterval": "10"}))
        await until(lambda: stats.rtd_every == 10, what="the schedule to follow the interval")
        assert stats.rtd_due - loop.time() <= 10  # the next upload in 10 s, not in an hour
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(asyncio.wait_for(scenario(), 20))
