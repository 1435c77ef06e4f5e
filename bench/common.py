"""Helpers shared by the benchmarks: process CPU/RSS sampling and summary statistics."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path


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
