"""`citygate demo` as a visitor runs it: a subprocess that starts the city, runs, and sums up."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from citygate.rig import free_port

pytestmark = [pytest.mark.hil, pytest.mark.timeout(180)]


def test_demo_runs_the_city_pages_the_crew_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "citygate.cli", "demo", "--duration", "45",
         "--http", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "city")],
        capture_output=True, text=True, timeout=150, check=False)
    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr[-3000:]}"

    # Where to look: every page with its token, the receivers and the API docs.
    base = f"http://127.0.0.1:{port}"
    for page in ("/crew?token=", "/ops?token=", "/parking?token=", "/environment?token=",
                 "/docs", "/?token="):
        assert f"{base}{page}" in out, page
    assert re.search(r"pushes\s+http://127\.0\.0\.1:\d+/", out)

    summary = out[out.index("summary:"):]
    gateways = re.search(r"(\d+)/(\d+) gateways online, (\d+) devices, (\d+) readings", summary)
    assert gateways, summary
    online, total, devices, readings = map(int, gateways.groups())
    assert (online, total) == (4, 4)
    assert devices >= 6 + 6 + 5 + 36  # lifts on TCP and RTU, stations, parking bays
    assert readings > 1000
    assert re.search(r"#\d+ trapped_passenger lift-t02 \(open, unit lift-maintenance\)",
                     summary), summary
    delivered = re.search(r"pushes delivered: (\d+) \((.*)\)", summary)
    assert delivered, summary
    assert re.search(r"webhook:lift-crew (\d+)", delivered.group(2)), summary

    # Every process logged to <data dir>/logs, and the pushes were kept as files.
    logs = {p.name for p in (tmp_path / "city" / "logs").iterdir()}
    assert {"collector.log", "gw-tcp-01.log", "gw-rtu-01.log", "gw-park-01.log",
            "gw-env-01.log", "sim-parking.log", "receivers.log"} <= logs
    assert any(p.name.endswith("-webhook-lift-crew-200.json")
               for p in (tmp_path / "city" / "pushes").iterdir())


def test_a_killed_demo_leaves_no_process_behind(tmp_path: Path) -> None:
    """SIGKILL gives the demo no chance to stop its children: the watchdog must."""
    import psutil

    from citygate.rig import wait_for

    demo = subprocess.Popen(
        [sys.executable, "-m", "citygate.cli", "demo", "--duration", "120",
         "--http", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "city")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert demo.stdout is not None
        for line in demo.stdout:  # the whole city runs once data flows
            if "data is flowing" in line or "demo failed" in line:
                break
        assert "data is flowing" in line, line
        children = psutil.Process(demo.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()[:6]) for c in children)
        for part in ("mosquitto", "collector run", "edge run", "sim elevators", "reaper"):
            assert part in names, (part, names)
        demo.kill()
        demo.wait(10)

        def gone() -> bool:
            return not [c for c in children if c.is_running()
                        and c.status() != psutil.STATUS_ZOMBIE]

        wait_for(gone, 20, "every child of the killed demo to exit")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
