"""Gather DVC experiments into the paper's ablation table and a metric-vs-RVQ-layers plot.

Input is ``dvc exp show --json`` (every commit and experiment with its params and metrics);
output is one row per run and training phase — the main run (``metrics/scores.json``) and each
fine-tuning phase (``metrics/finetune/NAME/scores.json``, e.g. the paper's Clotho fine-tune) —
with token type, RVQ layers and codebook size, CLAP on/off, the caption reranking (``generate.rerank``) and the scores, followed by one row per other epoch
``train.keep_best`` kept (from ``scores_epochs.json`` beside the scores: column ``epoch``, and
``selected`` False), as Markdown
or CSV, and an SVG line plot of SPIDEr (CIDEr-D where SPICE is unavailable) against
``rvq.layers`` for the runs whose codes come from the RVQ codebooks (``beats_rvq``, ``hubert_rvq``),
one line per token type, codebook size and CLAP setting. No plotting library is
needed: the SVG is written directly.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from clapart_core.encoders.registry import TOKEN_TYPES
from clapart_core.scoring.metrics import epochs_path, notes_path

COLUMNS = (
    "run", "phase", "epoch", "selected", "encoder.type", "rvq.layers", "rvq.codebook_size", "codebook_corpus", "rvq_error", "model.use_clap",
    "rerank",
    "spider", "cider_d", "spice", "meteor", "bleu_4", "rouge_l", "baseline_cider_d", "n_clips",
)
#: the score columns, read from a scores file (or a kept epoch's ``test`` entry)
SCORE_COLUMNS = ("spider", "cider_d", "spice", "meteor", "bleu_4", "rouge_l")
SCORES = "metrics/scores.json"
FINETUNE_SCORES = re.compile(r"^metrics/finetune/(?P<name>[^/]+)/scores\.json$")


def uses_codebooks(encoder_type: Any) -> bool:
    """True if ``encoder_type``'s codes come from the RVQ codebooks, so that ``rvq.*`` applies to it
    (a type this version does not know, e.g. from an old experiment, counts as not)."""
    kind = TOKEN_TYPES.get(encoder_type) if isinstance(encoder_type, str) else None
    return bool(kind and kind.codebooks)


def rerank_label(generate: Any) -> str:
    """The ``rerank`` column: ``none`` (the paper's beam search; also runs from before the key), or
    e.g. ``hybrid 0.3, 50 nucleus`` (mode, the hybrid weight, candidates and how they were drawn)."""
    if not isinstance(generate, dict) or generate.get("rerank", "none") == "none":
        return "none"
    weight = f" {generate.get('rerank_weight')}," if generate["rerank"] == "hybrid" else ""
    return f"{generate['rerank']}{weight} {generate.get('candidates')} {generate.get('sampling')}"


def _phase(metrics_file: str) -> str | None:
    """``main`` for the first phase's scores, ``finetune/NAME`` for a fine-tune's, else None."""
    if metrics_file == SCORES:
        return "main"
    match = FINETUNE_SCORES.match(metrics_file)
    return f"finetune/{match['name']}" if match else None


def _runs(node: Any) -> Iterator[dict[str, Any]]:
    """Every entry of ``dvc exp show --json`` that carries params and metrics, depth first."""
    if isinstance(node, list):
        for item in node:
            yield from _runs(item)
    elif isinstance(node, dict):
        data = node.get("data")
        if isinstance(data, dict) and "params" in data:
            yield node
        for key in ("experiments", "revs"):
            if node.get(key):
                yield from _runs(node[key])


def _short(rev: str) -> str:
    """Commit shas shortened as git does; names such as ``workspace`` kept whole."""
    return rev[:7] if len(rev) == 40 and all(c in "0123456789abcdef" for c in rev) else rev


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


#: the scores' context (clip count, baseline …) lives in a side file that is not a DVC metric
NOTE_COLUMNS = ("baseline_cider_d", "n_clips")
NotesReader = Callable[[str, str], dict[str, Any]]


def read_notes(rev: str, scores_file: str, cwd: Path | None = None) -> dict[str, Any]:
    """The ``*_notes.json`` beside ``scores_file`` as run ``rev`` left it: from the working tree for
    ``workspace``, else from git (DVC commits it with each experiment: it is a ``cache: false`` out);
    ``{}`` where there is none (a run from before the side file existed)."""
    return _side_file(rev, notes_path(Path(scores_file)).as_posix(), cwd)


def read_rvq(rev: str, _scores_file: str, cwd: Path | None = None) -> dict[str, Any]:
    """``metrics/rvq.json`` (the codebooks' source and their error on the training split) as run
    ``rev`` left it, as :func:`read_notes`; the fine-tunes share the main run's codebooks."""
    return _side_file(rev, "metrics/rvq.json", cwd)


def codebook_corpus(params: dict[str, Any]) -> str:
    """Where a run's codebooks come from, for the ``codebook_corpus`` column: ``train split``
    (fitted on the training split, as the paper; also runs from before the choice existed),
    ``SOURCE:ROOT`` (params ``codebook_corpus``) or ``file:PATH`` (``rvq.codebooks_file``)."""
    file, source = _get(params, "rvq.codebooks_file"), _get(params, "codebook_corpus.source")
    if file:
        return f"file:{file}"
    return f"{source}:{_get(params, 'codebook_corpus.root')}" if source else "train split"


def read_epochs(rev: str, scores_file: str, cwd: Path | None = None) -> dict[str, Any]:
    """The ``*_epochs.json`` beside ``scores_file`` (selected and kept epochs, see
    ``clapart_core.scoring.metrics.write_epoch_scores``) as run ``rev`` left it, as :func:`read_notes`."""
    return _side_file(rev, epochs_path(Path(scores_file)).as_posix(), cwd)


def _side_file(rev: str, path: str, cwd: Path | None) -> dict[str, Any]:
    if rev == "workspace":
        file = (cwd or Path.cwd()) / path
        return json.loads(file.read_text()) if file.is_file() else {}
    out = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=cwd, capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def collect_rows(
    exp_show: list[dict[str, Any]], notes: NotesReader = read_notes, epochs: NotesReader = read_epochs, rvq_report: NotesReader = read_rvq
) -> list[dict[str, Any]]:
    """One row per run and phase that has scores (its selected epoch), then one per other kept
    epoch of it; duplicates of the same run (workspace = HEAD) are kept once.

    ``notes(rev, scores_file)``, ``epochs(rev, scores_file)`` and ``rvq_report(rev, scores_file)``
    give the side files of a run's scores (see :func:`read_notes`, :func:`read_epochs`,
    :func:`read_rvq`): ``rvq_error`` is the codebooks' relative error on the training split's frames.
    """
    rows, seen = [], set()
    for run in _runs(exp_show):
        data = run["data"]
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        metrics = data.get("metrics") or {}
        # the main phase first, then the fine-tunes by name
        phases = sorted(((p, f) for f in metrics if (p := _phase(f))), key=lambda pf: (pf[0] != "main", pf[0]))
        for phase, metrics_file in phases:
            scores = (metrics[metrics_file] or {}).get("data")
            if not scores:
                continue
            rev = str(run.get("rev", ""))
            kept = epochs(rev, metrics_file)
            rvq = uses_codebooks(_get(params, "encoder.type"))
            row = {
                "run": run.get("name") or data.get("name") or _short(rev),
                "phase": phase,
                "epoch": kept.get("selected_epoch"),
                "selected": True,
                "encoder.type": _get(params, "encoder.type"),
                "rvq.layers": _get(params, "rvq.layers") if rvq else None,
                "rvq.codebook_size": _get(params, "rvq.codebook_size") if rvq else None,
                "codebook_corpus": codebook_corpus(params) if rvq else None,
                "rvq_error": rvq_report(rev, metrics_file).get("relative_error") if rvq else None,
                "model.use_clap": _get(params, "model.use_clap"),
                "rerank": rerank_label(params.get("generate")),
                **{k: scores.get(k) for k in SCORE_COLUMNS},
                **{k: notes(rev, metrics_file).get(k) for k in NOTE_COLUMNS},
            }
            others = [
                {**row, "epoch": e["epoch"], "selected": False, **{k: (e.get("test") or {}).get(k) for k in SCORE_COLUMNS}}
                for e in kept.get("epochs") or []
                if not e.get("selected")
            ]
            key = json.dumps({k: v for k, v in row.items() if k != "run"}, sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                rows.extend([row, *others])
    return rows


def exp_show_json(cwd: Path | None = None, revs: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run ``dvc exp show --json`` in ``cwd`` (experiments of HEAD, or of each commit in ``revs``) and parse it."""
    args = ["dvc", "exp", "show", "--json", *(a for rev in revs for a in ("--rev", rev))]
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"dvc exp show failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    return json.loads(out.stdout)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def plot_metric(rows: Sequence[dict[str, Any]]) -> str:
    """SPIDEr when any run with RVQ codebooks has it, else CIDEr-D (SPICE absent)."""
    rvq = [r for r in rows if r["rvq.layers"] is not None]
    return "spider" if any(r.get("spider") is not None for r in rvq) else "cider_d"


def _line_labels(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One label per row naming its line: the CLAP setting, plus the token type and the codebook
    size and the reranking where the plotted runs differ in them (the paper's plot: BEATs-RVQ, one K,
    with/without CLAP, no reranking)."""
    vary_type = len({r["encoder.type"] for r in rows}) > 1
    vary_size = len({r["rvq.codebook_size"] for r in rows}) > 1
    vary_rerank = len({r.get("rerank", "none") for r in rows}) > 1
    labels = []
    for r in rows:
        parts = [str(r["encoder.type"])] if vary_type else []
        parts += [f"K={r['rvq.codebook_size']}"] if vary_size else []
        parts += ["with CLAP" if r["model.use_clap"] else "without CLAP"]
        parts += [f"rerank {r.get('rerank', 'none')}"] if vary_rerank else []
        labels.append(", ".join(parts))
    return labels


def write_layers_svg(rows: Sequence[dict[str, Any]], path: Path, width: int = 520, height: int = 320) -> str:
    """Plot the metric against ``rvq.layers`` (log2 axis) for the runs with RVQ codebooks, one line per
    token type, codebook size and CLAP setting (:func:`_line_labels`), one point per run: its
    selected epoch (rows of other kept epochs are left out); returns the metric name."""
    import math

    rows = [r for r in rows if r.get("selected", True)]
    metric = plot_metric(rows)
    plotted = [r for r in rows if r["rvq.layers"] and r.get(metric) is not None]
    points: dict[str, list[tuple[int, float]]] = {}
    for r, label in zip(plotted, _line_labels(plotted), strict=True):
        points.setdefault(label, []).append((int(r["rvq.layers"]), float(r[metric])))
    if not points:
        raise ValueError(f"no run with RVQ codebooks (beats_rvq, hubert_rvq) has {metric} to plot")
    xs = sorted({x for pts in points.values() for x, _ in pts})
    ys = [y for pts in points.values() for _, y in pts]
    lo, hi = min(ys), max(ys)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    left, right, top, bottom = 60, width - 20, 30, height - 45
    lx = [math.log2(x) for x in xs]
    sx = lambda x: left + (math.log2(x) - min(lx)) / ((max(lx) - min(lx)) or 1) * (right - left)  # noqa: E731
    sy = lambda y: bottom - (y - lo) / (hi - lo) * (bottom - top)  # noqa: E731
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<text x="{width / 2}" y="18" text-anchor="middle">{metric} vs RVQ layers</text>',
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>',
        f'<text x="{(left + right) / 2}" y="{height - 8}" text-anchor="middle">rvq.layers</text>',
        f'<text x="{left - 6}" y="{bottom}" text-anchor="end">{lo:.3f}</text>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{hi:.3f}</text>',
    ]
    svg += [f'<text x="{sx(x):.1f}" y="{bottom + 16}" text-anchor="middle">{x}</text>' for x in xs]
    for i, (label, pts) in enumerate(sorted(points.items())):
        pts = sorted(pts)
        colour = colours[i % len(colours)]
        path_d = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for j, (x, y) in enumerate(pts))
        svg.append(f'<path d="{path_d}" fill="none" stroke="{colour}" stroke-width="2"/>')
        svg += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in pts]
        svg.append(f'<text x="{right - 100}" y="{top + 16 * (i + 1)}" fill="{colour}">{label}</text>')
    svg.append("</svg>")
    Path(path).write_text("\n".join(svg) + "\n")
    return metric
