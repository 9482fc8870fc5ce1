"""`clapart evaluate`'s cost per 1,000 captions, and which step dominates.

Scores ~2,000 seeded synthetic clips (a candidate and 5 references each, 6-12 words, drawn from a
sound-event vocabulary so that n-grams overlap as in real captions) with every DCASE metric,
through :func:`clapart_core.scoring.metrics.evaluate_files` as the CLI runs it, and reports the
wall time per 1,000 captions with each step's share: the PTB tokenizer (one JVM run), BLEU,
METEOR (a JVM that loads a 62 MB paraphrase table, then aligns every candidate with every
reference), ROUGE-L, CIDEr-D, and SPICE where CoreNLP is installed.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.common import line

SUBJECTS = ["a dog", "a man", "a woman", "rain", "a car", "birds", "a crowd", "water", "an engine", "a bell", "wind", "a child", "a train", "a door"]
VERBS = ["barks", "speaks", "falls", "passes by", "chirp", "cheers", "flows", "idles", "rings", "blows", "laughs", "honks", "slams", "hums"]
PLACES = ["in the distance", "nearby", "on a roof", "outside", "in a room", "loudly", "softly", "repeatedly", "while it rains", "in the background"]
LINKS = ["and", "while", "as", "then"]


def _caption(rng: np.random.Generator) -> str:
    first = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)}"
    if rng.random() < 0.6:
        return f"{first} {rng.choice(LINKS)} {rng.choice(SUBJECTS)} {rng.choice(VERBS)}"
    return first


def write_synthetic(folder: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """``predictions.csv`` and ``references.csv`` for ``n`` clips (5 references each)."""
    rng = np.random.default_rng(seed)
    preds, refs = folder / "predictions.csv", folder / "references.csv"
    with preds.open("w", newline="") as fp, refs.open("w", newline="") as fr:
        wp, wr = csv.writer(fp), csv.writer(fr)
        wp.writerow(["file_name", "caption_predicted"])
        wr.writerow(["file_name", *(f"caption_{k}" for k in range(1, 6))])
        for i in range(n):
            wp.writerow([f"clip_{i:05d}.wav", _caption(rng)])
            wr.writerow([f"clip_{i:05d}.wav", *(_caption(rng) for _ in range(5))])
    return preds, refs


def main(quick: bool = False) -> Iterator[str]:
    from clapart_core.scoring.metrics import evaluate_files

    n = 500 if quick else 2000
    with tempfile.TemporaryDirectory(prefix="clapart-bench-eval-") as tmp:
        preds, refs = write_synthetic(Path(tmp), n)
        result = evaluate_files(preds, refs, None, show=False)
    seconds = result["seconds"]
    total = seconds["total"]
    steps = sorted(((v, k) for k, v in seconds.items() if k != "total"), reverse=True)
    top_value, top_name = steps[0]
    yield line("evaluate_per_1000_captions", 1000 * total / n, "s", f"{n} synthetic clips x 5 references, {total:.1f} s in all")
    for value, name in steps:
        yield line(f"evaluate_{name}_per_1000", 1000 * value / n, "s", f"{100 * value / total:.0f} % of the total")
    yield f"# the largest step is {top_name} ({100 * top_value / total:.0f} %); unavailable here: {', '.join(result['unavailable']) or 'none'}"


if __name__ == "__main__":
    import sys

    for text in main(quick="--quick" in sys.argv):
        print(text, flush=True)
