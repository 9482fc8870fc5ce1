"""`clapart bench`: run every benchmark and print one line per figure,
`name: value unit (ratio vs baseline)`, baselines measured in the same run.

Lines starting with ``#`` describe the run (machine, versions, load, seconds per benchmark);
they are not figures. ``--quick`` shrinks every benchmark (under a minute on 2 idle cores).
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time
import traceback

BENCHMARKS = (
    "bench.bench_tokenize",
    "bench.bench_rvq",
    "bench.bench_storage",
    "bench.bench_beats",
    "bench.bench_extract",
    "bench.bench_train",
    "bench.bench_ddp",
    "bench.bench_dvc",
    "bench.bench_evaluate",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def load_state() -> str:
    """Load average and, where the kernel reports it, the share of the last minute in which some
    task waited for a CPU (PSI): 0 % on an idle machine, ~90 % on a 2-core box shared four ways."""
    text = "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()
        text += f", CPU pressure {float(dict(kv.split('=') for kv in some[1:])['avg60']):.0f} %"
    except (OSError, KeyError, ValueError, IndexError):
        pass
    return text


def describe() -> str:
    """One ``#`` line: CPU, cores, library versions, machine load."""
    import torch

    from clapart_core.tokens.rvq import import_faiss  # a bare `import faiss` here would pick OpenBLAS's slow
    # generic kernels for the whole run (it chooses them once, at load): see import_faiss

    faiss = import_faiss()
    return (
        f"# {_cpu_model()}, {os.cpu_count()} cores, python {platform.python_version()}, torch {torch.__version__}, "
        f"faiss {faiss.__version__}, {load_state()}"
    )


def main(quick: bool = False, only: tuple[str, ...] = ()) -> int:
    """Run the benchmarks (``only``: module names to run); returns the number that failed."""
    print(describe() + (" [--quick]" if quick else ""), flush=True)
    failures = 0
    started = time.perf_counter()
    for name in BENCHMARKS:
        if only and name.rsplit(".", 1)[-1] not in only and name not in only:
            continue
        start = time.perf_counter()
        try:
            for line in importlib.import_module(name).main(quick=quick):
                print(line, flush=True)
        except Exception:  # one broken benchmark must not hide the others' figures
            failures += 1
            print(f"# {name} FAILED:\n# " + traceback.format_exc().strip().replace("\n", "\n# "), flush=True)
        print(f"# {name}: {time.perf_counter() - start:.1f} s", flush=True)
    print(f"# total: {time.perf_counter() - started:.1f} s, {load_state()}", flush=True)
    return failures


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--quick"]
    sys.exit(1 if main(quick="--quick" in sys.argv, only=tuple(args)) else 0)
