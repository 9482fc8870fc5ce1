"""`clapart caption` on real files, as a new user meets it (issue 13, items 2, 3, 6, 7).

Every option is checked before a model loads (one line, exit 2); a file that cannot be used is one
error record and one stderr line while the others are captioned (exit 1); short clips are padded
and flagged; long files are read one stretch at a time (peak RSS of a 10-minute file within 1.5x
that of a 10 s file); output formats are escaped; a model directory is data (paths stay inside
it, sizes are checked before allocating, the network is never touched).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from caption_model import DECODE_MAX_SECONDS, build_model_dir, write_tone
from typer.testing import CliRunner

from clapart_core.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("caption_model"))


@pytest.fixture
def audio(tmp_path: Path) -> Path:
    """A folder of inputs: two good files (WAV mono 44.1 kHz, FLAC stereo 48 kHz) and the usual mistakes."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_tone(folder / "good.wav", 440.0, 1.0)
    write_tone(folder / "good2.flac", 880.0, 2.0, sr=48_000, channels=2)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notes.wav").write_text("this is not audio\n")
    (folder / "folder.wav").mkdir()
    write_tone(folder / "click.wav", 1760.0, 0.06, sr=22_050)  # a UI blip, shorter than one BEATs patch
    write_tone(folder / "tick.wav", 1760.0, 0.001)  # 1 ms
    nan = np.zeros(16_000, dtype=np.float32)
    nan[100] = np.nan
    sf.write(folder / "nan.wav", nan, 16_000, subtype="FLOAT")
    return folder


def run(model_dir: Path, *args: str) -> tuple[int, str, str]:
    """`clapart caption ... --model M --device cpu` in-process: (exit code, stdout, stderr)."""
    result = CliRunner(env={"HF_HUB_OFFLINE": "1"}).invoke(app, ["caption", *args, "--model", str(model_dir), "--device", "cpu"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_jsonl_gives_two_captions_and_one_error_record_and_exit_1(model_dir: Path, audio: Path) -> None:
    before = listing(audio)
    code, out, err = run(model_dir, "--format", "jsonl", str(audio / "good.wav"), str(audio / "empty.wav"), str(audio / "good2.flac"))
    assert code == 1
    records = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["file"]).name for r in records] == ["good.wav", "empty.wav", "good2.flac"]
    good, bad, good2 = records
    assert good["caption"] and good2["caption"] and good["error"] is None and good2["error"] is None
    assert (good["start"], good["end"], good2["end"]) == (0.0, 1.0, 2.0)
    assert bad == {
        "file": str(audio / "empty.wav"), "start": None, "end": None, "caption": None, "flags": [],
        "error": f"{audio / 'empty.wav'}: audio file is empty (0 bytes) [empty]", "reason": "empty",
    }
    assert err.splitlines() == [f"error: {audio / 'empty.wav'}: audio file is empty (0 bytes) [empty]"]
    assert listing(audio) == before  # caption writes nothing


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("empty.wav", "audio file is empty (0 bytes) [empty]"),
        ("notes.wav", "not a readable audio file (Error opening '{path}': Format not recognised.) [unreadable]"),
        ("folder.wav", "is a directory, not an audio file [unreadable]"),
        ("nan.wav", "audio contains NaN or infinite samples [non_finite]"),
    ],
)
def test_a_file_that_cannot_be_used_is_one_line_and_the_others_are_captioned(model_dir: Path, audio: Path, name: str, message: str) -> None:
    path = audio / name
    code, out, err = run(model_dir, str(path), str(audio / "good.wav"))
    assert code == 1
    assert err.splitlines() == [f"error: {path}: {message.format(path=path)}"]
    header, bad, good = out.splitlines()
    assert header == "file\tstart\tend\tcaption\tflags\terror"
    assert bad.split("\t")[0] == str(path) and bad.split("\t")[3] == "" and bad.endswith(message.format(path=path))
    assert good.split("\t")[0] == str(audio / "good.wav") and good.split("\t")[3]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["{audio}/missing.wav"], "error: '{audio}/missing.wav' does not exist"),
        (["{audio}/*.ogg"], "error: no file matches '{audio}/*.ogg'"),
        (["--num-beams", "0", "{audio}/good.wav"], "error: --num-beams must be at least 1, got 0"),
        (["--max-length", "0", "{audio}/good.wav"], "error: --max-length must be at least 1, got 0"),
        # the decoder has max_frames + 2 = 514 learned positions; more used to end in an IndexError mid-generation
        (["--max-length", "515", "{audio}/good.wav"], "error: --max-length 515 is more than the 514 caption tokens the decoder of {model} has positions for"),
        (["--device", "tpu", "{audio}/good.wav"], "error: --device 'tpu' is not one of cpu, cuda, auto"),
        (["--window", "0", "{audio}/good.wav"], "error: --window must be a positive number of seconds, got 0.0"),
        (["--window", "60", "{audio}/good.wav"], "error: --window must be between 0.175 s and 10.26 s (what {model} captions at once), got 60"),
        (["--format", "xml", "{audio}/good.wav"], "error: --format 'xml' is not one of tsv, csv, jsonl"),
    ],
)
def test_mistakes_in_the_command_are_one_line_and_exit_2_before_loading(
    model_dir: Path, audio: Path, args: list[str], line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import clapart_core.captioner.inference as inference

    def no_loading(*_a, **_k):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(inference.CaptionPipeline, "from_model_dir", no_loading)
    fill = {"audio": str(audio), "model": str(model_dir)}
    result = CliRunner().invoke(app, ["caption", *[a.format(**fill) for a in args], "--model", str(model_dir)])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [line.format(**fill)]


def test_device_cuda_without_a_gpu_is_one_line(model_dir: Path, audio: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: --device cuda is valid here")
    result = CliRunner().invoke(app, ["caption", str(audio / "good.wav"), "--model", str(model_dir), "--device", "cuda"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: --device cuda was asked for but torch sees no CUDA GPU here; use --device cpu or auto"]


def test_short_clips_are_padded_and_captioned_and_say_so(model_dir: Path, audio: Path) -> None:
    code, out, err = run(model_dir, "--format", "jsonl", str(audio / "click.wav"), str(audio / "tick.wav"))
    assert code == 0 and err == ""
    click, tick = (json.loads(line) for line in out.splitlines())
    assert click["caption"] and click["end"] == 0.06
    assert click["flags"] == ["padded: 0.060 s is shorter than 0.175 s, padded with silence"]
    assert tick["caption"] and tick["flags"] == ["padded: 0.001 s is shorter than 0.175 s, padded with silence"]


def test_glob_patterns_are_expanded_in_order(model_dir: Path, audio: Path) -> None:
    code, out, _ = run(model_dir, "--format", "jsonl", str(audio / "good*"))
    assert code == 0
    assert [Path(json.loads(line)["file"]).name for line in out.splitlines()] == ["good.wav", "good2.flac"]


def test_tab_and_newline_in_a_file_name_stay_one_record_in_tsv_and_csv(model_dir: Path, tmp_path: Path) -> None:
    odd = write_tone(tmp_path / "a\tb\nc\\d.wav", 660.0, 0.5)
    code, out, _ = run(model_dir, str(odd))
    assert code == 0
    header, line = out.splitlines()
    cells = line.split("\t")
    assert len(cells) == 6 and cells[0] == str(odd).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    code, out, _ = run(model_dir, "--format", "csv", str(odd))
    rows = list(csv.reader(io.StringIO(out)))
    assert code == 0 and rows[0] == ["file", "start", "end", "caption", "flags", "error"]
    assert len(rows) == 2 and rows[1][0] == str(odd) and rows[1][3]


def test_window_captions_a_long_file_window_by_window_with_timestamps(model_dir: Path, tmp_path: Path) -> None:
    long = write_tone(tmp_path / "long.wav", 440.0, 25.0, sr=44_100, channels=2)
    code, out, err = run(model_dir, "--format", "jsonl", "--window", "10", str(long))
    assert code == 0 and err == ""
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["start"], r["end"]) for r in records] == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
    assert all(r["caption"] and not r["flags"] for r in records)
    # without --window: the first stretch the encoders saw in training (decode.max_seconds), flagged when cropped
    longer = write_tone(tmp_path / "longer.wav", 440.0, 40.0, sr=16_000)
    code, out, _ = run(model_dir, "--format", "jsonl", str(longer))
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert (record["start"], record["end"]) == (0.0, DECODE_MAX_SECONDS)
    assert record["flags"] == ["cropped: captioned from the first 30.00 s of 40.00 s (use --window for all of it)"]


def test_memory_does_not_grow_with_the_files_length(model_dir: Path, tmp_path: Path) -> None:
    """A 10-minute 44.1 kHz stereo WAV (106 MB of PCM) needs at most 1.5x the peak RSS of a 10 s one,
    whole-file (the first 30 s are read) and window by window (60 windows of 10 s); each run is a
    child process measured by wait4 (bench/caption_memory.py prints the same figures)."""
    from bench.caption_memory import measure

    lines = measure(model_dir, tmp_path, window=10.0)
    print("\n" + "\n".join(lines))
    figures = {line.split(":")[0]: float(line.split()[1]) for line in lines}
    assert "first 30 s read" in lines[1] and "60 windows of 10 s" in lines[2]
    assert figures["caption_rss_10min"] <= 1.5 * figures["caption_rss_10s"]
    assert figures["caption_rss_10min_window"] <= 1.5 * figures["caption_rss_10s"]


# ------------------------------------------------------------------------ model directories are data
def _copy_model(model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    return copy


def _edit_frontend(model: Path, edit) -> None:
    front = json.loads((model / "frontend.json").read_text())
    edit(front)
    (model / "frontend.json").write_text(json.dumps(front))


INSIDE = "must be a path inside the model directory (absolute paths and '..' are refused)"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f["encoder"]["spec"].update(checkpoint="/etc/hostname"), f"encoder.spec.checkpoint = '/etc/hostname' {INSIDE}"),
        (lambda f: f["encoder"]["spec"].update(checkpoint="../../../../etc/hostname"), f"encoder.spec.checkpoint = '../../../../etc/hostname' {INSIDE}"),
        (lambda f: f["encoder"]["spec"].update(checkpoint="beats.pt"), "encoder.spec.checkpoint = 'beats.pt' is not in the model directory"),
        (lambda f: f.update(note="run me"), "has unknown field 'note' (known: clap, encoder, encoder_type, max_seconds, num_codebooks)"),
        (lambda f: f["encoder"]["spec"].update(url="http://x"), "encoder.spec has unknown field 'url' (known: checkpoint, layer, random, seed)"),
        (lambda f: f.update(encoder_type="wav2vec"), "encoder_type='wav2vec' is not one of beats_rvq, beats_tokenizer, encodec"),
        (lambda f: f.update(num_codebooks=True), "num_codebooks must be an integer, got true"),
        (lambda f: f["clap"]["spec"].update(checkpoint="/models/clap"), "clap.spec.checkpoint = '/models/clap' must be a path inside the model directory"),
    ],
)
def test_frontend_fields_paths_and_types_are_refused_in_one_line(model_dir: Path, tmp_path: Path, audio: Path, edit, message: str) -> None:
    model = _copy_model(model_dir, tmp_path)
    _edit_frontend(model, edit)
    code, out, err = run(model, str(audio / "good.wav"))
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"error: {model / 'frontend.json'}") and message in line


def test_a_symlink_in_the_model_directory_may_not_lead_out(model_dir: Path, tmp_path: Path, audio: Path) -> None:
    model = _copy_model(model_dir, tmp_path)
    outside = tmp_path / "outside.pt"
    outside.write_bytes(b"not yours")
    (model / "frontend").mkdir()
    (model / "frontend" / "beats.pt").symlink_to(outside)
    _edit_frontend(model, lambda f: f["encoder"]["spec"].update(checkpoint="frontend/beats.pt"))
    code, _, err = run(model, str(audio / "good.wav"))
    assert code == 2
    link = "encoder.spec.checkpoint = 'frontend/beats.pt' is a link that leads out of the model directory"
    assert err.splitlines() == [f"error: {model / 'frontend.json'}: {link}"]


def test_huge_random_sizes_are_refused_before_anything_is_allocated(model_dir: Path, tmp_path: Path, audio: Path) -> None:
    import resource

    model = _copy_model(model_dir, tmp_path)
    huge = {"encoder_layers": 48, "encoder_embed_dim": 16384, "encoder_ffn_embed_dim": 65536, "encoder_attention_heads": 16, "embed_dim": 512}
    _edit_frontend(model, lambda f: f["encoder"]["spec"].update(random=huge))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, _, err = run(model, str(audio / "good.wav"))
    assert code == 2
    (line,) = err.splitlines()
    assert "the random beats config" in line and "parameters, more than the 1,000,000,000 any random model may have" in line
    assert "refused before allocating" in line
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: no 100+ GB attempt

    other = {"encoder_layers": 1, "encoder_embed_dim": 32, "encoder_attention_heads": 2, "embed_dim": 32}
    _edit_frontend(model, lambda f: f["encoder"]["spec"].update(random=other))
    code, _, err = run(model, str(audio / "good.wav"))  # a plausible size, but not the weights the model was trained on
    assert code == 2 and "differ from those the model was trained on" in err and len(err.splitlines()) == 1


def test_a_config_that_does_not_fit_the_weights_is_refused_before_building(model_dir: Path, tmp_path: Path, audio: Path) -> None:
    model = _copy_model(model_dir, tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["bart"]["encoder_layers"] = 400
    (model / "config.json").write_text(json.dumps(config))
    code, _, err = run(model, str(audio / "good.wav"))
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith(f"error: {model / 'config.json'} describes a model of ") and line.endswith("the config does not belong to these weights")


def test_a_hub_id_is_read_from_the_local_cache_only_never_the_network(
    model_dir: Path, tmp_path: Path, audio: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _copy_model(model_dir, tmp_path)
    _edit_frontend(model, lambda f: f["clap"]["spec"].update(checkpoint="someone/clap-model"))
    connects: list[object] = []

    def no_network(self, address):  # noqa: ANN001
        connects.append(address)
        raise OSError("network used")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    result = CliRunner().invoke(app, ["caption", str(audio / "good.wav"), "--model", str(model), "--device", "cpu"])
    assert result.exit_code == 2 and connects == []
    assert result.stderr.splitlines() == ["error: CLAP model 'someone/clap-model' is not in the local Hugging Face cache, and it is never downloaded here"]


def test_write_frontend_copies_a_local_checkpoint_into_the_model_directory(model_dir: Path, tmp_path: Path, audio: Path) -> None:
    """The train stage given beats.checkpoint=/abs/path.pt records frontend/encoder/NAME inside the
    directory (a copy), so the directory names no path outside itself and still captions."""
    from caption_model import BEATS_SPEC

    from clapart_core.captioner.frontend import load_frontend
    from clapart_core.captioner.model_dir import write_frontend
    from clapart_core.encoders.beats import random_beats, save_beats_checkpoint
    from clapart_core.encoders.registry import token_metadata, token_type
    from clapart_core.pipeline.storage import model_fingerprint

    model = _copy_model(model_dir, tmp_path)
    weights = tmp_path / "elsewhere" / "BEATs_tiny.pt"
    weights.parent.mkdir()
    beats = random_beats(BEATS_SPEC["random"], BEATS_SPEC["seed"])
    save_beats_checkpoint(beats, weights)
    front = json.loads((model / "frontend.json").read_text())
    kind = token_type("beats_rvq")
    spec = {"checkpoint": str(weights.resolve()), "random": None, "seed": 3}
    record = {"name": "beats", "spec": spec, "pretrained": True, "weights_sha256": model_fingerprint(beats)}
    meta = token_metadata(kind, 2, 8, record, codebooks=(str(model / "rvq.npz"), {}))
    clap_h5 = tmp_path / "clap.h5"
    from clapart_core.pipeline.storage import RaggedWriter

    attrs = {"spec": json.dumps(front["clap"]["spec"]), "pretrained": False, "weights_sha256": front["clap"]["weights_sha256"]}
    with RaggedWriter(clap_h5, (16,), np.float32, attrs=attrs):
        pass
    shutil.copy(model / "rvq.npz", tmp_path / "rvq.npz")
    write_frontend(model, meta, tmp_path / "rvq.npz", clap_h5, max_seconds=30.0)
    loaded = load_frontend(model)
    assert loaded["encoder"]["spec"]["checkpoint"] == "frontend/encoder/BEATs_tiny.pt"
    assert (model / "frontend/encoder/BEATs_tiny.pt").read_bytes() == weights.read_bytes()
    shutil.rmtree(weights.parent)  # the directory does not need the original
    code, out, err = run(model, str(audio / "good.wav"))
    assert code == 0 and err == "" and out.splitlines()[1].split("\t")[3]
