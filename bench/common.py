"""Helpers shared by the benchmarks: process CPU/RSS sampling, summary statistics, and a fresh
hub database per run."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from citygate.rig import pg_database


@dataclass(frozen=True, slots=True)
class ProcSample:
    """CPU seconds (user+system) and peak RSS of a process at one instant."""

    cpu_s: float
    rss_peak_kb: int
    rss_kb: int


def sample(pid: int) -> ProcSample:
    """Read /proc for a process's CPU time and RSS (peak and current)."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = 100.0  # os.sysconf("SC_CLK_TCK") on Linux
    cpu = (int(stat[11]) + int(stat[12])) / ticks
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return ProcSample(cpu, int(status["VmHWM"].split()[0]), int(status["VmRSS"].split()[0]))


def tree_cpu_s(parent: int) -> float:
    """CPU seconds of a server and all its children, live or ended: the parent's own and its
    reaped children's times, plus each live child's (PostgreSQL's postmaster and backends,
    connections opened and closed mid-run included)."""
    stat = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in stat[11:15])  # utime, stime, cutime, cstime
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            child = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(child[1]) == parent:
            ticks += int(child[11]) + int(child[12])
    return ticks / 100.0  # os.sysconf("SC_CLK_TCK") on Linux


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    """Median of several runs."""
    return statistics.median(values) if values else float("nan")


def report_runs(runs: list[dict[str, float]], title: str, width: int = 32) -> None:
    """Print each run's figures, then the median of every figure under `title`."""
    for i, r in enumerate(runs, 1):
        print(f"run {i}: " + ", ".join(f"{k}={v:.4g}" for k, v in r.items()), flush=True)
    print(f"\n{title}, median of {len(runs)} runs:")
    for key in runs[0]:
        print(f"  {key:{width}s} {median([r[key] for r in runs]):.4g}")


@contextmanager
def database(backend: str, prefix: str) -> Iterator[str]:
    """The URL of a new, empty hub database, removed afterwards: `sqlite` in a temporary
    directory, `postgresql` at CITYGATE_TEST_PG's server (named `<prefix>_<random>`)."""
    if backend == "postgresql":
        with pg_database(prefix) as url:
            yield url
    else:
        with tempfile.TemporaryDirectory(prefix=f"{prefix}-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'hub.sqlite'}"
