"""The ``clapart`` command line.

Stage commands (``clapart corpus``, ``clapart decode``, …) run the same ``stages/*.py`` files that
``dvc repro`` runs, from the project root; use them to run one stage by hand. ``caption``
captions your own audio files with a trained model directory, ``evaluate`` scores a caption file,
``bench`` runs the benchmarks.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
import runpy
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])

STAGES = {
    "corpus": "Build data/corpus/manifest.parquet (generates the demo corpus for data.source=demo).",
    "configure": "Resolve params.yaml into the settings that apply to encoder.type; check named models exist (data/config).",
    "decode": "Decode every clip to mono PCM at the encoders' sample rates; skip/flag report (data/audio, metrics/decode.json).",
    "features": "The token encoder's outputs per split: BEATs patch features, or a discrete encoder's codes (data/features/encoder).",
    "clap": "Extract the global CLAP audio embedding per clip (data/features/clap).",
    "codebooks": "Fit the residual k-means codebooks on training features (data/codebooks/rvq.npz).",
    "tokenize": "Token Parquet per split: RVQ codes of the first rvq.layers codebooks, or the discrete codes (data/tokens).",
    "train": "Train the BART captioner (data/model, dvclive).",
    "score": "Caption the test split and score it (data/predictions, metrics/scores.json).",
}


def _stage_command(name: str, help_text: str) -> None:
    def run(
        phase: Annotated[str | None, typer.Option(help="A fine-tuning phase: an entry NAME of params `finetune` (the ft_* stages).")] = None,
        debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of a user error (bad params, a missing file, ...).")] = False,
    ) -> None:
        script = Path("stages") / f"{name}.py"
        if not script.is_file():
            raise typer.BadParameter(f"{script} not found: run stage commands from the clapart project root (the folder with dvc.yaml)")
        # the same command line dvc.yaml runs (`python -m stages.NAME --phase P`)
        sys.argv = [str(script), *(["--phase", phase] if phase else []), *(["--debug"] if debug else [])]
        sys.path.insert(0, str(Path.cwd()))
        runpy.run_module(f"stages.{name}", run_name="__main__", alter_sys=True)

    app.command(name, help=help_text)(run)


for _name, _help in STAGES.items():
    _stage_command(_name, _help)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("clapart")
        except PackageNotFoundError:  # run from a source tree that was never installed
            from clapart_core import __version__ as installed
        typer.echo(f"clapart {installed}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Options that come before any command (``clapart --version``)."""


def _fail(message: str) -> NoReturn:
    """A mistake the user can fix: one line on stderr, exit code 2, nothing loaded or written."""
    typer.echo(f"error: {_one_line(message)}", err=True)
    raise typer.Exit(2)


def _one_line(text: str) -> str:
    """``text`` with backslashes, tabs and line breaks escaped (``\\``, ``\\t``, ``\\n``, ``\\r``): one
    line whatever a file name holds. The escaping of ``--format tsv`` (and of stderr lines)."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


_GLOB_CHARS = frozenset("*?[")
CAPTION_FORMATS = ("tsv", "csv", "jsonl")
CAPTION_COLUMNS = ("file", "start", "end", "caption", "flags", "error")


def expand_audio_args(args: list[str]) -> list[Path]:
    """Command-line audio arguments -> paths, in order: an existing path as given, a pattern with
    ``*``, ``?`` or ``[`` expanded (sorted; ``**`` recurses), as a shell would when it can.

    Raises:
        typer.Exit(2): a path that does not exist or a pattern that matches nothing (one line naming them).
    """
    paths: list[Path] = []
    missing: list[str] = []
    unmatched: list[str] = []
    for arg in args:
        if os.path.lexists(arg):
            paths.append(Path(arg))
        elif _GLOB_CHARS & set(arg):
            found = sorted(glob.glob(arg, recursive=True))
            paths.extend(Path(f) for f in found)
            if not found:
                unmatched.append(arg)
        else:
            missing.append(arg)
    if unmatched:
        _fail(f"no file matches {', '.join(repr(u) for u in unmatched)}")
    if missing:
        _fail(f"{', '.join(repr(m) for m in missing)} {'does' if len(missing) == 1 else 'do'} not exist")
    return paths


def check_device(device: str) -> None:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``; CUDA only when torch sees a GPU (one line, exit 2 otherwise)."""
    if device not in ("cpu", "auto") and not re.fullmatch(r"cuda(:\d+)?", device):
        _fail(f"--device {device!r} is not one of cpu, cuda, auto")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            _fail(f"--device {device} was asked for but torch sees no CUDA GPU here; use --device cpu or auto")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            _fail(f"--device {device}: there are only {torch.cuda.device_count()} CUDA device(s)")


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


class CaptionWriter:
    """Writes :class:`clapart_core.captioner.inference.CaptionRecord` s to stdout in one format, a
    line (or CSV record) per record, flushed at once, and each error as one line on stderr.

    Columns: ``file, start, end, caption, flags, error`` (seconds with 3 decimals; ``flags``
    joined by ``"; "``; an error record has an empty caption). ``tsv``: a header line, then one
    line per record with backslash, tab and line breaks escaped as ``\\``, ``\t``, ``\n``,
    ``\r``; ``csv``: RFC 4180 quoting (a line break in a file name stays inside its quoted field);
    ``jsonl``: one JSON object per line with every column (``flags`` a list, absent values null,
    plus ``reason``; with ``--rerank``, ``selected`` and ``candidates``: each candidate's caption,
    ``loglik``, ``clap_cosine`` and ``score``).
    """

    def __init__(self, fmt: str, out: Any = None) -> None:
        self.fmt = fmt
        self.out = out or sys.stdout
        self.failed = 0
        self._csv = csv.writer(self.out, lineterminator="\n") if fmt == "csv" else None
        if fmt == "tsv":
            self.out.write("\t".join(CAPTION_COLUMNS) + "\n")
        elif self._csv is not None:
            self._csv.writerow(CAPTION_COLUMNS)

    def write(self, record: Any) -> None:
        if record.error is not None:
            self.failed += 1
            typer.echo(f"error: {_one_line(record.error)}", err=True)
        cells = [record.file, _seconds(record.start), _seconds(record.end), record.caption or "", "; ".join(record.flags), record.error or ""]
        if self.fmt == "tsv":
            self.out.write("\t".join(_one_line(c) for c in cells) + "\n")
        elif self._csv is not None:
            self._csv.writerow(cells)
        else:
            obj = {
                "file": record.file,
                "start": None if record.start is None else round(record.start, 3),
                "end": None if record.end is None else round(record.end, 3),
                "caption": record.caption,
                "flags": list(record.flags),
                "error": record.error,
                "reason": record.reason,
            }
            if record.candidates is not None:  # --rerank: every candidate and its scores, to audit the choice
                c = record.candidates
                obj["selected"] = c.chosen
                cosine = [None] * len(c.texts) if c.clap_cosine is None else [float(v) for v in c.clap_cosine]
                obj["candidates"] = [
                    {"caption": t, "loglik": float(c.loglik[j]), "clap_cosine": cosine[j], "score": float(c.score[j])} for j, t in enumerate(c.texts)
                ]
            self.out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.out.flush()


@app.command()
def caption(
    audio: Annotated[list[str], typer.Argument(help="Audio files or glob patterns (wav/flac/ogg/mp3; any rate; mono or stereo).", show_default=False)],
    model: Annotated[Path, typer.Option(help="Trained model directory (the train stage's data/model).")] = Path("data/model"),
    num_beams: Annotated[int, typer.Option(help="Beam size (>= 1).")] = 4,
    max_length: Annotated[int, typer.Option(help="Longest caption, in tokens (1 to the model's decoder positions).")] = 50,
    device: Annotated[str, typer.Option(help="cpu, cuda (or cuda:N) or auto.")] = "auto",
    window: Annotated[
        float | None, typer.Option(help="Caption each WINDOW seconds of a file in turn, with timestamps (default: the first stretch the model reads).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="Output: tsv, csv or jsonl (one record per file or window).")] = "tsv",
    batch_size: Annotated[int, typer.Option(help="Clips (or windows) captioned together.")] = 8,
    rerank: Annotated[
        str, typer.Option(help="none (the best beam), clap (CLAP audio-text cosine) or hybrid: rerank candidate captions as generate.rerank does.")
    ] = "none",
    candidates: Annotated[int, typer.Option(help="Candidate captions per clip with --rerank (>= 2).")] = 50,
    sampling: Annotated[str, typer.Option(help="How --rerank's candidates are drawn: nucleus or beam.")] = "nucleus",
    temperature: Annotated[float, typer.Option(help="Nucleus sampling temperature (> 0).")] = 0.5,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass, in (0, 1].")] = 0.95,
    rerank_weight: Annotated[float, typer.Option(help="hybrid: weight of the log-likelihood, 1 - it of the CLAP cosine, in [0, 1].")] = 0.3,
    seed: Annotated[int, typer.Option(help="Nucleus sampling seed (the params' seed reproduces the score stage's candidates).")] = 1115,
) -> None:
    """Caption your own audio files with a trained model.

    Every option is checked before the model is loaded (exit code 2 and one line on error). A file
    that cannot be used gives an error record and one line on stderr, and the others are still
    captioned (exit code 1 when any failed). Memory does not grow with a file's length.
    """
    if fmt not in CAPTION_FORMATS:
        _fail(f"--format {fmt!r} is not one of {', '.join(CAPTION_FORMATS)}")
    for name, value in (("--num-beams", num_beams), ("--max-length", max_length), ("--batch-size", batch_size)):
        if value < 1:
            _fail(f"{name} must be at least 1, got {value}")
    if window is not None and not (math.isfinite(window) and window > 0):
        _fail(f"--window must be a positive number of seconds, got {window}")
    check_device(device)
    from clapart_core.captioner.rerank import RerankSettings

    try:
        rerank_settings = RerankSettings(rerank, candidates, sampling, temperature, top_p, rerank_weight, seed)
    except ValueError as err:
        _fail(f"--rerank options: {err}")
    paths = expand_audio_args(audio)
    # a model directory is data: it must not make `caption` reach the network
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clapart_core.captioner.model_dir import ModelDirError

    if not model.is_dir():
        _fail(f"--model {model} is not a model directory (run the train stage, or pass --model DIR)")
    from clapart_core.captioner.inference import CaptionPipeline, model_limits

    try:
        limits = model_limits(model)
    except (ModelDirError, FileNotFoundError) as err:
        _fail(str(err))
    if max_length > limits.max_length:
        _fail(f"--max-length {max_length} is more than the {limits.max_length} caption tokens the decoder of {model} has positions for")
    if window is not None and not limits.min_seconds <= window <= limits.max_window:
        _fail(f"--window must be between {limits.min_seconds:.3f} s and {limits.max_window:.2f} s (what {model} captions at once), got {window:g}")
    if rerank_settings.uses_clap:
        from clapart_core.captioner.frontend import load_frontend

        if load_frontend(model)["clap"] is None:
            _fail(f"--rerank {rerank} needs a CLAP model, and {model} has none (it was trained with model.use_clap false); use --rerank none")

    import transformers

    from clapart_core.encoders.spec import ModelNotFoundError
    from clapart_core.pipeline.checkpoints import CheckpointError

    # stderr carries one line per failed file: no weight-loading bars or generation-flag notices
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:
        pipe = CaptionPipeline.from_model_dir(model, device=device)
    except (ModelDirError, ModelNotFoundError, CheckpointError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    writer = CaptionWriter(fmt)
    stream = pipe.caption_stream(paths, window=window, num_beams=num_beams, max_length=max_length, batch_size=batch_size, rerank=rerank_settings)
    for record in stream:
        writer.write(record)
    if writer.failed:
        raise typer.Exit(1)


def _model_or_spec(value: str, option: str) -> str | dict:
    """A hub id / directory as given, or a ``{"random": ..., "seed": ...}`` JSON spec as a dict."""
    if not value.lstrip().startswith("{"):
        return value
    try:
        spec = json.loads(value)
    except json.JSONDecodeError as err:
        raise typer.BadParameter(f"{option} looks like a JSON spec but is not valid JSON ({err})") from None
    if not isinstance(spec, dict) or "seed" not in spec:
        raise typer.BadParameter(f'{option} JSON spec must be an object like {{"random": {{...}}, "seed": 0}}')
    return spec


@app.command("import-enclap")
def import_enclap(
    src: Annotated[Path, typer.Argument(help="EnCLAP checkpoint directory (config.json + pytorch_model.bin or model.safetensors).")],
    out: Annotated[Path, typer.Argument(help="clapart model directory to write (usable by `clapart caption` and the score stage).")],
    tokenizer: Annotated[str, typer.Option(help="Caption tokenizer: hub id or directory (EnCLAP's is BART's).")] = "facebook/bart-base",
    encodec: Annotated[
        str, typer.Option(help='EnCodec model: hub id or directory, or a JSON spec {"random": {...}, "seed": N} (tests).')
    ] = "facebook/encodec_24khz",
    clap: Annotated[
        str,
        typer.Option(help='CLAP model: hub id or directory, or a JSON spec {"random": {...}, "seed": N} (tests).'),
    ] = "laion/clap-htsat-fused",
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Import an EnCLAP checkpoint as a clapart model directory (EnCodec front end at EnCLAP's bandwidth)."""
    from clapart_core.captioner.enclap_import import import_enclap as run_import
    from clapart_core.encoders.clap import ModelNotFoundError
    from clapart_core.pipeline.checkpoints import CheckpointError

    try:
        summary = run_import(
            src,
            out,
            tokenizer=tokenizer,
            encodec=_model_or_spec(encodec, "--encodec"),
            clap=_model_or_spec(clap, "--clap"),
            force=force,
        )
    except (CheckpointError, ModelNotFoundError, ValueError, FileExistsError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{src} -> {out} ({summary['n_parameters']} parameters, EnCodec front end, tokenizer {tokenizer})")


EVALUATE_FORMATS = ("table", "json", "csv")


@app.command()
def evaluate(
    predictions: Annotated[Path, typer.Option(help="CSV with file_name, caption_predicted (data/predictions/test.csv).")],
    references: Annotated[Path, typer.Option(help="Clotho-style CSV: file_name, caption_1..caption_N (the corpus's test CSV).")],
    out: Annotated[Path | None, typer.Option(help="Also write the scores here as the score stage does: OUT (numbers) and OUT's _notes.json.")] = None,
    per_clip: Annotated[Path | None, typer.Option(help="Also write the per-clip table (worst CIDEr-D first) here.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="stdout: table, json (= metrics/scores.json's shape) or csv.")] = "table",
) -> None:
    """Score any caption file against references with the DCASE metrics.

    stdout holds the scores in one format; stderr the notes (unavailable metrics, empty
    predictions) and the time per 1,000 captions. Output files are checked before scoring and
    written atomically.
    """
    if fmt not in EVALUATE_FORMATS:
        _fail(f"--format {fmt!r} is not one of {', '.join(EVALUATE_FORMATS)}")
    from clapart_core.scoring.metrics import (
        ScoringInputError,
        ScoringSetupError,
        check_writable,
        evaluate_files,
        format_scores_csv,
        format_scores_table,
        metric_values,
        timing_summary,
    )

    try:
        for path, what in ((out, "--out"), (per_clip, "--per-clip")):
            if path is not None:
                check_writable(path, what)
        result = evaluate_files(
            predictions, references, out, per_clip_csv=per_clip, show=False, progress=True,
            warn=lambda text: typer.echo(f"warning: {text}", err=True),
        )
    except (ScoringInputError, ScoringSetupError) as err:
        _fail(str(err))
    except OSError as err:  # e.g. the disk filled up while writing --out: nothing half-written is left
        _fail(f"could not write the scores ({err.strerror or err}: {err.filename or out})")
    if fmt == "json":
        typer.echo(json.dumps(metric_values(result), indent=2))
    elif fmt == "csv":
        typer.echo(format_scores_csv(result), nl=False)
    else:
        typer.echo(format_scores_table(result))
    for name, reason in (result.get("unavailable") or {}).items():
        typer.echo(f"note: {name} unavailable: {_one_line(reason)}", err=True)
    typer.echo(timing_summary(result["n_clips"], result["seconds"]), err=True)


def _parsed(path: Path) -> object:
    """A YAML file's values (a file that does not parse matches nothing)."""
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        return object()


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
    # values, not bytes: `dvc exp run -S` rewrites the file (null as an empty value, comments kept or not)
    if params.is_file() and not force and all(_parsed(params) != _parsed(profiles / f"{p}.yaml") for p in available):
        typer.echo("error: params.yaml has edits that no profile holds; save them as profiles/NAME.yaml or pass --force", err=True)
        raise typer.Exit(2)
    params.write_bytes(source.read_bytes())
    typer.echo(f"params.yaml <- {source}; run `dvc repro` (or `dvc exp run`) to apply")


@app.command("launch-command")
def launch_command(
    nodes: Annotated[int, typer.Option(help="Machines the job runs on.")] = 1,
    gpus_per_node: Annotated[int, typer.Option(help="Processes per machine: one per GPU (or CPU processes with --cpu).")] = 1,
    node_rank: Annotated[int, typer.Option(help="Which machine this command is for: 0 is the one at --main-ip.")] = 0,
    main_ip: Annotated[str | None, typer.Option(help="Address of machine 0 (several machines).")] = None,
    port: Annotated[int, typer.Option(help="Rendezvous port on machine 0.")] = 29500,
    phase: Annotated[str | None, typer.Option(help="A fine-tuning phase (the finetune@NAME stage) instead of train.")] = None,
    cpu: Annotated[bool, typer.Option(help="CPU processes on gloo instead of GPUs.")] = False,
    slurm: Annotated[bool, typer.Option(help="Print a SLURM batch script for all machines instead (run it with `sbatch --wait`).")] = False,
) -> None:
    """Print the command that runs the train stage on NODES x GPUS_PER_NODE processes (README: Several GPUs or machines).

    Run it from the project root on each machine (its own --node-rank), with train.num_processes
    set to the total in params.yaml, or put the SLURM script's `sbatch --wait` in the stage's cmd.
    """
    from clapart_core.captioner import distributed
    from clapart_core.pipeline.errors import ParamsError

    module = ["stages.train", *(["--phase", phase] if phase else [])]
    try:
        if slurm:
            typer.echo(distributed.slurm_script(module, nodes=nodes, gpus_per_node=gpus_per_node, main_process_port=port), nl=False)
            return
        argv, env = distributed.launch_command(
            module, num_processes=nodes * gpus_per_node, num_machines=nodes, machine_rank=node_rank,
            main_process_ip=main_ip, main_process_port=port, cpu=cpu,
        )
    except ParamsError as exc:
        _fail(str(exc))
    typer.echo(f"# train.num_processes: {nodes * gpus_per_node} in params.yaml; machine {node_rank} of {nodes}")
    typer.echo(distributed.format_command(argv, env))


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


@app.command("demo-corpus")
def demo_corpus(
    out: Annotated[Path, typer.Argument(help="Root to write (folder layout; an earlier demo corpus there is replaced).")],
    clips: Annotated[int, typer.Option(help="Clips in all (70/15/15 train/val/test).")] = 400,
    seconds: Annotated[float, typer.Option(help="Clip length (s).")] = 4.0,
    seed: Annotated[int, typer.Option(help="Corpus seed (same seed, same files; the pipeline's demo uses params seed).")] = 1115,
    layout: Annotated[
        list[str] | None, typer.Option(metavar="NAME=WEIGHT", help="Scene layout weight (repeatable; unnamed layouts get 0; default: the demo's mix).")
    ] = None,
) -> None:
    """Generate a synthetic demo corpus in the folder layout, e.g. a second corpus with other event mixes
    for `dvc exp run -S codebook_corpus.source=folder -S codebook_corpus.root=OUT`."""
    from clapart_core.corpus.demo import LAYOUTS, generate_demo_corpus

    weights = None
    if layout:
        try:
            weights = {name: float(w) for name, w in (item.split("=", 1) for item in layout)}
        except ValueError:
            _fail(f"--layout takes NAME=WEIGHT with NAME one of {', '.join(LAYOUTS)}, got {' '.join(layout)}")
    try:
        generate_demo_corpus(out, n_clips=clips, clip_seconds=seconds, seed=seed, layout_weights=weights)
    except (FileExistsError, ValueError) as err:
        _fail(str(err))
    typer.echo(f"{out}: {clips} demo clips of {seconds:g} s (seed {seed}, layouts {weights or 'default'})")


@app.command()
def results(
    md: Annotated[Path | None, typer.Option(help="Write the table as Markdown here.")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write the table as CSV here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the metric-vs-RVQ-layers plot (SVG) here.")] = None,
    phase: Annotated[str, typer.Option(help="Phase the plot shows: main, or finetune/NAME (e.g. finetune/clotho).")] = "main",
    rev: Annotated[list[str] | None, typer.Option(help="Experiments derived from this commit (repeatable; default: HEAD).")] = None,
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
    only: Annotated[list[str] | None, typer.Option(help="Run only these benchmarks (e.g. bench_rvq); repeatable.")] = None,
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
