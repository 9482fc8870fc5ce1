"""Shared helpers of the benchmarks: thread setup, interleaved timing, and the result-line format.

Every benchmark yields lines ``name: value unit (ratio vs baseline)``; :func:`line` writes them
and :data:`LINE_RE` reads them back (tests, RESULTS.md tooling).
"""

from __future__ import annotations

import os
import re
import statistics
import time
from collections.abc import Callable

import torch

#: ``name: value unit (note)``; the note holds the ratio and what it is relative to
LINE_RE = re.compile(r"^(?P<name>[A-Za-z0-9_]+): (?P<value>-?[0-9.]+(?:e[+-]?[0-9]+)?) (?P<unit>[^()]+?)(?: \((?P<note>.*)\))?$")


def bench_threads() -> int:
    """Threads every benchmark uses: ``CLAPART_BENCH_THREADS`` or all cores.

    Set once for torch and FAISS so that no library spawns more threads than there are cores
    (oversubscription on a 2-core machine halves GEMM throughput).
    """
    return int(os.environ.get("CLAPART_BENCH_THREADS") or os.cpu_count() or 1)


def set_threads(n: int | None = None) -> int:
    """Pin torch (and FAISS, when installed) to ``n`` threads; returns ``n``."""
    n = n or bench_threads()
    torch.set_num_threads(n)
    try:
        from clapart_core.tokens.rvq import import_faiss  # not a bare `import faiss`: see import_faiss

        import_faiss().omp_set_num_threads(n)
    except ImportError:
        pass
    return n


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(variants: dict[str, Callable[[], object]], reps: int, warmup: bool = True) -> dict[str, float]:
    """Median wall seconds per call of each variant.

    The variants alternate (A B C A B C ...) so that a change of machine load, which is common
    on a shared 2-core box, hits the measured variant and its baseline alike.
    """
    if warmup:
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def fmt(value: float) -> str:
    """Three significant digits, no exponent for the usual ranges."""
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return f"{value:.3e}"


def line(name: str, value: float, unit: str, note: str | None = None) -> str:
    """One result line: ``name: value unit (note)``."""
    return f"{name}: {fmt(value)} {unit}" + (f" ({note})" if note else "")


def parse_line(text: str) -> dict[str, str | float]:
    """Inverse of :func:`line`: ``{'name', 'value', 'unit', 'note'}``; raises on a malformed line."""
    match = LINE_RE.match(text.strip())
    if match is None:
        raise ValueError(f"not a benchmark line: {text!r}")
    out: dict[str, str | float] = dict(match.groupdict(default=""))
    out["value"] = float(match["value"])
    return out

