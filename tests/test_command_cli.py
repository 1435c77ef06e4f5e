"""`citygate command run`: arguments from the command line and the one-line view of a command."""

from __future__ import annotations

import pytest

from citygate.command_cli import _line, parse_arg
from citygate.rest_cli import CliError


def test_arguments_are_numbers_when_all_digits_else_text() -> None:
    assert parse_arg("cn=2051") == ("cn", 2051)
    assert parse_arg("begin=2026-01-05T08:00Z") == ("begin", "2026-01-05T08:00Z")
    assert parse_arg("params=time,rtd_interval") == ("params", "time,rtd_interval")
    with pytest.raises(CliError, match="not key=value"):
        parse_arg("cn")


def test_a_line_shows_the_operation_its_arguments_and_the_answer() -> None:
    base = {"id": "c-1", "device": "dust-1", "status": "done", "reason": "", "message": "",
            "point": None, "value_written": None}
    line = _line(base | {"op": "request_history", "args": {"cn": "2051", "begin": 1, "end": 2},
                         "value_read_back": {"frames": 3, "exe_rtn": 1, "cn": "2051"}})
    assert line == ('c-1  dust-1  request_history(cn=2051 begin=1 end=2)  done  '
                    '(answered {"frames": 3, "exe_rtn": 1, "cn": "2051"})')
    params = _line(base | {"op": "read_params", "args": {"params": ["rtd_interval", "time"]},
                           "status": "failed", "reason": "no_answer", "message": "silent",
                           "value_read_back": None})
    assert params == "c-1  dust-1  read_params(params=rtd_interval,time)  failed  (no_answer:" \
        " silent)"
    write = _line(base | {"op": "write", "args": {"point": "home_floor", "value": 7},
                          "point": "home_floor", "value_written": 7, "value_read_back": 7})
    assert write == "c-1  dust-1  home_floor=7  done  (read back 7)"
