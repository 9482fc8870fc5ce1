"""`clapart bench`: run every benchmark and print one line per figure,
`name: value unit (ratio vs baseline)`, baselines measured in the same run."""

from __future__ import annotations

import importlib

BENCHMARKS = ("bench.bench_beats",)


def main(quick: bool = False) -> None:
    for name in BENCHMARKS:
        module = importlib.import_module(name)
        for line in module.main(quick=quick):
            print(line, flush=True)


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv)
