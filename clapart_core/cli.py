"""The ``clapart`` command line.

Stage commands (``clapart corpus``, ``clapart decode``, …) run the same ``stages/*.py`` files that
``dvc repro`` runs, from the project root; use them to run one stage by hand. ``caption``
captions your own audio files with a trained model directory, ``evaluate`` scores a caption file,
``bench`` runs the benchmarks.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])

STAGES = {
    "corpus": "Build data/corpus/manifest.parquet (generates the demo corpus for data.source=demo).",
    "configure": "Resolve params.yaml into the settings that apply to encoder.type; check named models exist (data/config).",
    "decode": "Decode every clip to mono PCM at the encoders' sample rates; skip/flag report (data/audio, metrics/decode.json).",
    "features": "BEATs patch features, or the codes of beats_tokenizer / encodec, per split (data/features/encoder).",
    "clap": "Extract the global CLAP audio embedding per clip (data/features/clap).",
    "codebooks": "Fit the residual k-means codebooks on training features (data/codebooks/rvq.npz).",
    "tokenize": "Token Parquet per split: RVQ codes of the first rvq.layers codebooks, or the discrete codes (data/tokens).",
    "train": "Train the BART captioner (data/model, dvclive).",
    "score": "Caption the test split and score it (data/predictions, metrics/scores.json).",
}


def _stage_command(name: str, help_text: str) -> None:
    def run() -> None:
        script = Path("stages") / f"{name}.py"
        if not script.is_file():
            raise typer.BadParameter(f"{script} not found: run stage commands from the clapart project root (the folder with dvc.yaml)")
        sys.argv = [str(script)]
        sys.path.insert(0, str(Path.cwd()))
        runpy.run_module(f"stages.{name}", run_name="__main__", alter_sys=True)

    app.command(name, help=help_text)(run)


for _name, _help in STAGES.items():
    _stage_command(_name, _help)


@app.command()
def caption(
    audio: Annotated[list[Path], typer.Argument(help="Audio files (wav/flac/ogg/mp3; any rate; mono or stereo).")],
    model: Annotated[Path, typer.Option(help="Trained model directory (the train stage's data/model).")] = Path("data/model"),
    num_beams: Annotated[int, typer.Option(help="Beam size.")] = 4,
    max_length: Annotated[int, typer.Option(help="Longest caption, in tokens.")] = 50,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
) -> None:
    """Caption your own audio files with a trained model."""
    from clapart_core.encoders.beats import CheckpointError
    from clapart_core.captioner.inference import CaptionPipeline

    try:
        pipe = CaptionPipeline.from_model_dir(model, device=device)
    except CheckpointError as err:  # e.g. frontend.json names a BEATs file that would run code
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    for path, text in zip(audio, pipe.caption_files(audio, num_beams=num_beams, max_length=max_length), strict=True):
        typer.echo(f"{path}\t{text}")


@app.command()
def evaluate(
    predictions: Annotated[Path, typer.Option(help="CSV with file_name, caption_predicted.")],
    references: Annotated[Path, typer.Option(help="Clotho-style CSV: file_name, caption_1..caption_5.")],
    out: Annotated[Optional[Path], typer.Option(help="Where to write the scores as JSON.")] = None,
) -> None:
    """Score any caption file against references with the DCASE metrics."""
    from clapart_core.scoring.metrics import ScoringInputError, evaluate_files

    try:
        scores = evaluate_files(predictions, references, out)
    except ScoringInputError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(scores, indent=2))


@app.command()
def profile(
    name: Annotated[str, typer.Argument(help="Profile in profiles/ (demo, paper-audiocaps, ...).")],
    force: Annotated[bool, typer.Option(help="Overwrite a params.yaml that matches no profile.")] = False,
) -> None:
    """Switch params.yaml to a profile (and back: `clapart profile demo`)."""
    profiles = Path("profiles")
    available = sorted(p.stem for p in profiles.glob("*.yaml"))
    source = profiles / f"{name}.yaml"
    if not source.is_file():
        typer.echo(f"error: no profile {name!r} in {profiles}/ (available: {', '.join(available) or 'none'})", err=True)
        raise typer.Exit(2)
    params = Path("params.yaml")
    if params.is_file() and not force and all(params.read_bytes() != (profiles / f"{p}.yaml").read_bytes() for p in available):
        typer.echo("error: params.yaml has edits that no profile holds; save them as profiles/NAME.yaml or pass --force", err=True)
        raise typer.Exit(2)
    params.write_bytes(source.read_bytes())
    typer.echo(f"params.yaml <- {source}; run `dvc repro` (or `dvc exp run`) to apply")


@app.command("rehearsal-corpus")
def rehearsal_corpus(
    out: Annotated[Path, typer.Argument(help="Root to write (aac-datasets layout; an earlier rehearsal there is replaced).")],
    audiocaps: Annotated[
        tuple[int, int, int], typer.Option(metavar="N_TRAIN N_VAL N_TEST", help="AudioCaps-layout clips per split: 10 s, 32 kHz FLAC, 1 / 5 / 5 captions.")
    ] = (96, 4, 8),
    clotho: Annotated[
        tuple[int, int, int], typer.Option(metavar="N_TRAIN N_VAL N_TEST", help="Clotho-layout clips per split: 15-30 s, 44.1 kHz WAV, 5 captions.")
    ] = (13, 4, 8),
    seed: Annotated[int, typer.Option(help="Corpus seed (same seed, same files).")] = 1115,
    tokenizer_vocab: Annotated[int, typer.Option(help="Ids of the BART-sized caption tokenizer written beside the corpora (0: none).")] = 50265,
) -> None:
    """Generate AudioCaps- and Clotho-layout corpora from the synthetic sound scenes (for profiles/paper-rehearsal.yaml)."""
    from clapart_core.corpus.rehearsal import TOKENIZER_DIR, generate_rehearsal_corpora, training_captions

    try:
        clips = generate_rehearsal_corpora(out, audiocaps, clotho, seed)
    except (FileExistsError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if tokenizer_vocab:
        from clapart_core.captioner.text import train_caption_tokenizer

        train_caption_tokenizer(training_captions(clips), tokenizer_vocab, out_dir=out / TOKENIZER_DIR, pad_vocabulary=True)
    hours = sum(c.seconds for c in clips) / 3600
    typer.echo(f"{out}: {len(clips)} clips ({hours:.2f} h of audio); AudioCaps {tuple(audiocaps)}, Clotho {tuple(clotho)} (train, val, test)")


@app.command()
def results(
    md: Annotated[Optional[Path], typer.Option(help="Write the table as Markdown here.")] = None,
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Write the table as CSV here.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write the metric-vs-RVQ-layers plot (SVG) here.")] = None,
    phase: Annotated[str, typer.Option(help="Phase the plot shows: main, or finetune/NAME (e.g. finetune/clotho).")] = "main",
    rev: Annotated[Optional[list[str]], typer.Option(help="Experiments derived from this commit (repeatable; default: HEAD).")] = None,
) -> None:
    """Gather all DVC experiments (dvc exp show) into one ablation table, and a plot against rvq.layers."""
    from clapart_core.scoring import report

    rows = report.collect_rows(report.exp_show_json(revs=rev or ()))
    table = report.to_markdown(rows)
    typer.echo(table)
    if md:
        md.write_text(table)
    if csv_out:
        report.write_csv(rows, csv_out)
    if plot:
        chosen = [r for r in rows if r["phase"] == phase]
        if not chosen:
            raise typer.BadParameter(f"no scored runs for phase {phase!r}; phases: {', '.join(sorted({r['phase'] for r in rows})) or 'none'}")
        metric = report.write_layers_svg(chosen, plot)
        typer.echo(f"plot of {metric} vs rvq.layers ({phase}) -> {plot}")


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="Small sizes, under a minute.")] = False,
    only: Annotated[Optional[list[str]], typer.Option(help="Run only these benchmarks (e.g. bench_rvq); repeatable.")] = None,
) -> None:
    """Run the benchmarks and print one line per figure with its ratio to the in-run baseline."""
    bench_dir = Path(__file__).resolve().parent.parent / "bench"
    if not bench_dir.is_dir():
        raise typer.BadParameter(f"{bench_dir} not found: benchmarks run from a source checkout")
    sys.path.insert(0, str(bench_dir.parent))
    from bench.run import main

    if main(quick=quick, only=tuple(only or ())):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
