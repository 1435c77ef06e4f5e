"""`citygate edge check` / `edge run` as a technician runs them on a config and a profile file.

Every point the register decoder cannot honour is refused before deployment, all problems of a
file in one run; an HJ 212 station without its MN is refused by both commands with a clear
message (no traceback); an odd baud rate is a warning, not a failure.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BAD_PROFILE = """
name = "bad-lift"
kind = "elevator"
protocol = "modbus"

[points.car_running]
address = 1
bits = [0, 0]

[points.door_closed]
address = 2
bits = [15, 2]

[points.speed]
address = 3
type = "f32"
bits = [0, 1]

[points.floor]
address = 40004
type = "i16"

[points.load_percent]
address = 5
not_available = [-1]

[points.fault_code]
address = 6
enum = { 0 = "none", 1 = "door" }

[points.trip_count]
address = 8
type = "f32"

[points.running_hours]
address = 10
type = "u32"
scale = 0.1
"""

CONFIG = """
[gateway]
id = "gw-1"
data_dir = "{data}"

[[buses]]
name = "rs485-1"
type = "modbus-rtu"
port = "/dev/ttyS1"
baudrate = {baud}

[[buses]]
name = "env"
type = "hj212-tcp"
host = "127.0.0.1"
port = 9212

[[devices]]
id = "lift-1"
bus = "rs485-1"
profile = "{profile}"

[[devices]]
id = "dust-1"
bus = "env"
profile = "dust-hj212"
{mn}
"""


def citygate(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "citygate.cli", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def write_config(tmp_path: Path, *, profile: str = "elevator-gbt24476", baud: int = 9600,
                 mn: str = 'mn = "010000A8900016F000169DC0"') -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG.format(data=tmp_path / "data", baud=baud, profile=profile, mn=mn),
                    encoding="utf-8")
    return path


def test_check_lists_every_point_the_decoder_cannot_honour(tmp_path: Path) -> None:
    profile = tmp_path / "bad-lift.toml"
    profile.write_text(BAD_PROFILE, encoding="utf-8")
    config = write_config(tmp_path, profile=str(profile))
    done = citygate("edge", "check", "--config", str(config))
    assert done.returncode == 2
    where = f"  {config}: devices.0.profile: {profile}: points"
    assert done.stderr.splitlines() == [
        "config NOT valid (7 problem(s)):",
        f"{where}.car_running.bits: [0, 0] needs lowest bit >= 0 and width >= 1",
        f"{where}.door_closed.bits: [15, 2] reaches bit 16, beyond the 16 bits of u16",
        f"{where}.speed.bits: bit fields need an integer register type, not f32",
        f"{where}.floor.address: 40004 looks like a 1-based Modicon reference; Modbus addresses"
        " are 0-based: reference 40004 is address = 3; if the device really has registers"
        " there, set high_addresses = true in the profile",
        f"{where}.load_percent.not_available: -1 cannot occur in u16 (0..65535); write the raw"
        " register value, e.g. 65535 for 0xFFFF",
        f"{where}.fault_code.enum: label(s) 'none', 'door' of integer quantity fault_code must"
        " each be an integer",
        f"{where}.trip_count.type: f32 scaled by 1 reaches ±3.4e+38, beyond ±1e+15, the largest"
        " integer a reading carries; use an integer register type or a smaller scale",
    ]
    assert done.stdout == ""


def test_check_and_run_refuse_an_hj212_station_without_mn(tmp_path: Path) -> None:
    config = write_config(tmp_path, mn="")
    problem = (f"{config}: devices[1].mn: missing — device dust-1 is on HJ 212 bus 'env': add"
               ' mn = "...", the station\'s MN code (24 characters in HJ 212-2017, 14 in HJ/T'
               " 212-2005)")
    check = citygate("edge", "check", "--config", str(config))
    assert (check.returncode, check.stderr.splitlines()) == (
        2, ["config NOT valid (1 problem(s)):", f"  {problem}"])
    run = citygate("edge", "run", "--config", str(config))
    assert (run.returncode, run.stderr.splitlines()) == (2, [problem])
    assert not (tmp_path / "data").exists()  # refused before anything started


def test_check_refuses_two_stations_sharing_an_mn(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = config.read_text(encoding="utf-8")
    config.write_text(text + '\n[[devices]]\nid = "dust-2"\nbus = "env"\nprofile = "dust-hj212"\n'
                      'mn = "010000A8900016F000169DC0"\n', encoding="utf-8")
    done = citygate("edge", "check", "--config", str(config))
    assert done.returncode == 2
    assert (f"  {config}: devices[2].mn: '010000A8900016F000169DC0' is also the MN of device"
            " dust-1 on bus 'env' — give each station its own MN") in done.stderr.splitlines()


def test_check_refuses_a_station_password_that_would_break_a_request(tmp_path: Path) -> None:
    config = write_config(tmp_path, mn='mn = "010000A8900016F000169DC0"\npw = "12;34"')
    done = citygate("edge", "check", "--config", str(config))
    assert done.returncode == 2
    assert (f"  {config}: devices[1].pw: an HJ 212 password is at most 32 printable characters"
            " without spaces or any of ;&,=") in done.stderr.splitlines()


def test_check_refuses_a_profile_of_another_protocol(tmp_path: Path) -> None:
    config = write_config(tmp_path, profile="dust-hj212")
    done = citygate("edge", "check", "--config", str(config))
    assert done.returncode == 2
    assert done.stderr.splitlines()[1:] == [
        f"  {config}: devices[0].profile: profile 'dust-hj212' speaks hj212, but bus 'rs485-1'"
        " is modbus-rtu — use a modbus profile or put the device on a hj212 bus"]


def test_odd_baud_rate_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    config = write_config(tmp_path, baud=9601)
    done = citygate("edge", "check", "--config", str(config))
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        f"warning: {config}: buses[0].baudrate: 9601 is not a standard baud rate (nearest:"
        " 9600); check the device's setting"]
    assert done.stdout.startswith(f"{config}: valid\n")
    assert "9601" not in citygate("edge", "check", "--config",
                                  str(write_config(tmp_path, baud=19200))).stderr
