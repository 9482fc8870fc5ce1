"""Fault injection for the decode stage: every bad-input kind, with the exact outcome under
decode.on_error = fail and = skip (report contents included); and through the corpus and decode
stages, one list in metrics/decode.json of every CSV row that did not reach the features."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import yaml

from clapart_core.corpus.decoded import ClipDecodeError, audio_path, decode_split
from clapart_core.pipeline.params import run_stage
from clapart_core.pipeline.storage import RaggedReader

ROOT = Path(__file__).resolve().parents[1]
SR = 16_000


def _tone(seconds: float, sr: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = 0.4 * np.sin(2 * np.pi * 440 * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(root, manifest, expected outcome per clip): 'ok', ('flag', text) or ('skip', reason)."""
    root = tmp_path_factory.mktemp("faults")
    expect: dict[str, object] = {}

    def add(name: str, outcome: object) -> None:
        expect[name] = outcome

    # good files of every supported shape: channels 1-8, rates 8-96 kHz, bit depths, non-ASCII name
    for ch in (1, 2, 6, 8):
        sf.write(root / f"ch{ch}.wav", _tone(1.0, SR, ch), SR, subtype="PCM_16")
        add(f"ch{ch}", "ok")
    for sr in (8000, 22050, 44100, 96000):
        sf.write(root / f"sr{sr}.flac", _tone(1.0, sr), sr, subtype="PCM_16")
        add(f"sr{sr}", "ok")
    for subtype in ("PCM_U8", "PCM_24", "PCM_32", "FLOAT"):
        sf.write(root / f"{subtype}.wav", _tone(1.0, SR), SR, subtype=subtype)
        add(subtype, "ok")
    sf.write(root / "café_ünïcode.wav", _tone(1.0, SR), SR)
    add("café_ünïcode", "ok")
    # kept but flagged
    sf.write(root / "zeros.wav", np.zeros(SR), SR)
    add("zeros", ("flag", "silent"))
    sf.write(root / "long.wav", _tone(3.0, SR), SR)
    add("long", ("flag", "cropped"))
    sf.write(root / "full.wav", _tone(1.5, SR), SR, subtype="PCM_16")
    data = (root / "full.wav").read_bytes()
    (root / "truncated.wav").write_bytes(data[: len(data) // 2])  # header still promises 1.5 s
    add("truncated", ("flag", "truncated"))
    # unusable: skipped (or fatal)
    add("missing", ("skip", "missing"))
    (root / "empty.wav").write_bytes(b"")
    add("empty", ("skip", "empty"))
    (root / "text.wav").write_bytes(b"this is not audio, just text with a .wav name\n" * 20)
    add("text", ("skip", "unreadable"))
    nan = _tone(1.0, SR).astype(np.float32)
    nan[100] = np.nan
    sf.write(root / "nan.wav", nan, SR, subtype="FLOAT")
    add("nan", ("skip", "non_finite"))
    # shorter than one BEATs patch: padded with silence, kept, flagged
    sf.write(root / "short.wav", _tone(0.1, SR), SR)
    add("short", ("flag", "padded"))
    blip = np.stack([_tone(0.06, 44100), -_tone(0.06, 44100)], axis=1)  # a 60 ms UI blip, Ogg Vorbis stereo
    sf.write(root / "blip.ogg", blip, 44100, format="OGG", subtype="VORBIS")
    add("blip", ("flag", "padded"))
    expect.pop("full", None)
    files = {p.stem: p.name for p in root.iterdir()}
    rows = [
        {"clip_id": name, "split": "train", "audio_path": files.get(name, f"{name}.wav"), "captions": ["a tone"], "duration_s": 1.0}
        for name in expect
    ]
    return root, pa.Table.from_pylist(rows), expect


def test_skip_mode_reports_every_bad_clip_and_keeps_the_rest(corpus, tmp_path):
    root, manifest, expect = corpus
    report = decode_split(manifest, root, "train", tmp_path, [16000, 48000], max_seconds=2.0, on_error="skip")
    skipped = {s["clip_id"]: s["reason"].split(":")[0] for s in report.skipped}
    assert skipped == {k: v[1] for k, v in expect.items() if isinstance(v, tuple) and v[0] == "skip"}
    flagged = {f["clip_id"]: f["reason"].split(":")[0] for f in report.flagged}
    assert flagged == {k: v[1] for k, v in expect.items() if isinstance(v, tuple) and v[0] == "flag"}
    assert all(s["path"].startswith(str(root)) for s in report.skipped + report.flagged)
    kept = [k for k, v in expect.items() if not (isinstance(v, tuple) and v[0] == "skip")]
    js = report.to_json()
    assert (js["n_clips"], js["n_decoded"], js["n_skipped"], js["n_flagged"]) == (len(expect), len(kept), len(skipped), len(flagged))
    for sr in (16000, 48000):
        with RaggedReader(audio_path(tmp_path, sr, "train")) as r:
            assert r.clip_ids == kept  # later stages never see a skipped clip
            assert r.length("long") == 2 * sr  # cropped to decode.max_seconds
            assert r.length("sr96000") == sr and r.length("ch8") == sr
            assert not np.any(r["zeros"])
            assert 0 < r.length("truncated") < 1.5 * sr
            assert r.length("short") == r.length("blip") == round(0.175 * sr)  # one BEATs patch
            assert np.any(r["blip"][: int(0.05 * sr)]) and not np.any(r["blip"][int(0.07 * sr) :])  # the sound, then silence


def test_fail_mode_stops_at_the_first_bad_clip_with_one_line(corpus, tmp_path):
    root, manifest, expect = corpus
    first_bad = next(k for k, v in expect.items() if isinstance(v, tuple) and v[0] == "skip")
    with pytest.raises(ClipDecodeError) as err:
        decode_split(manifest, root, "train", tmp_path, [16000], max_seconds=2.0, on_error="fail")
    msg = str(err.value)
    assert msg.startswith(f"clip {first_bad!r} (") and "[missing]" in msg and "\n" not in msg
    assert not audio_path(tmp_path, 16000, "train").exists()  # no file that looks complete


def test_manifest_level_faults_are_clear(tmp_path):
    """Duplicate clip ids and empty captions are caught when the manifest is built."""
    from clapart_core.corpus.manifest import ManifestError
    from clapart_core.corpus.sources import read_folder_corpus

    sf.write(tmp_path / "a.wav", _tone(1.0, SR), SR)
    (tmp_path / "train.csv").write_text("file_name,caption_1,caption_2\na.wav,a tone,  \na.wav,again,x\n")
    with pytest.raises(ManifestError, match="a"):
        read_folder_corpus(tmp_path)
    (tmp_path / "train.csv").write_text("file_name,caption_1,caption_2\na.wav,   ,\n")
    with pytest.raises(ManifestError, match="no non-empty caption|caption"):
        read_folder_corpus(tmp_path)
    (tmp_path / "train.csv").write_text("file_name,caption_1,caption_2\na.wav,a tone,   \n")
    assert read_folder_corpus(tmp_path).column("captions").to_pylist() == [["a tone"]]


def test_short_clip_is_padded_to_one_beats_patch():
    from clapart_core.corpus.audio import MIN_CLIP_SECONDS, pad_to_min_length
    from clapart_core.encoders.beats import num_patches

    click = np.full(960, 0.5, np.float32)  # 0.06 s at 16 kHz
    padded, was = pad_to_min_length(click, 16_000)
    assert was and padded.dtype == np.float32 and len(padded) == 2800 == round(MIN_CLIP_SECONDS * 16_000)
    assert np.array_equal(padded[:960], click) and not np.any(padded[960:])
    assert num_patches(len(padded)) == 8 and num_patches(len(click)) == 0  # one time step of 8 codes
    assert len(pad_to_min_length(np.zeros(10), 48_000)[0]) == 8400
    same, was = pad_to_min_length(np.ones(3000, np.float32), 16_000)
    assert not was and len(same) == 3000


def _folder_project(tmp_path: Path, on_error: str, rows: list[str]) -> None:
    """A project whose folder corpus lists ``rows`` (file names) in train.csv, plus one test clip."""
    corpus = tmp_path / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    sf.write(corpus / "a.wav", _tone(1.0, SR), SR)
    sf.write(corpus / "b.flac", _tone(1.0, 22050), 22050)
    sf.write(corpus / "blip.wav", _tone(0.06, 44100), 44100)
    (corpus / "empty.wav").write_bytes(b"")
    (corpus / "notes.wav").write_text("not audio at all\n" * 50)
    nan = _tone(1.0, SR).astype(np.float32)
    nan[5] = np.nan
    sf.write(corpus / "nan.wav", nan, SR, subtype="FLOAT")
    (corpus / "train.csv").write_text("file_name,caption_1\n" + "".join(f"{name},a sound\n" for name in rows))
    (corpus / "test.csv").write_text("file_name,caption_1\nb.flac,a tone\n")
    listed = set(rows) | {"b.flac"}
    for path in corpus.glob("*.*"):  # what the CSVs do not name is not on disk either
        if path.suffix != ".csv" and path.name not in listed:
            path.unlink()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source="folder", root="corpus")
    params["decode"]["on_error"] = on_error
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _stage_in_process(name: str, project: Path) -> int:
    cwd = Path.cwd()
    os.chdir(project)
    try:
        run_stage(name, importlib.import_module(f"stages.{name}").main, argv=[])
        return 0
    except SystemExit as exit_:
        return exit_.code
    finally:
        os.chdir(cwd)


FOLDER_ROWS = ["a.wav", "empty.wav", "missing.wav", "notes.wav", "nan.wav", "blip.wav"]


def test_decode_json_lists_every_csv_row_that_was_left_out(tmp_path):
    """An empty, a non-audio, a missing and a NaN file under decode.on_error: skip: the corpus
    stage drops three, decode the fourth; metrics/decode.json names all four with reasons."""
    _folder_project(tmp_path, "skip", FOLDER_ROWS)
    for stage in ("corpus", "configure", "decode"):
        assert _stage_in_process(stage, tmp_path) == 0, stage
    report = json.loads((tmp_path / "metrics/decode.json").read_text())
    skipped = {s["clip_id"]: (s["reason"].split(":")[0], s["stage"], s["split"]) for s in report["skipped"]}
    assert skipped == {
        "empty": ("empty", "corpus", "train"),
        "notes": ("unreadable", "corpus", "train"),
        "missing": ("missing", "corpus", "train"),
        "nan": ("non_finite", "decode", "train"),
    }
    assert all(s["path"].startswith("corpus/") and s["reason"].split(": ", 1)[1] for s in report["skipped"])
    assert [(f["clip_id"], f["reason"].split(":")[0]) for f in report["flagged"]] == [("blip", "padded")]
    # n_clips counts the CSV rows: 6 in train.csv, 1 in test.csv
    assert (report["n_clips"], report["n_decoded"], report["n_skipped"], report["n_flagged"]) == (7, 3, 4, 1)
    with RaggedReader(tmp_path / "data/audio/sr16000/train.h5") as r:
        assert r.clip_ids == ["a", "blip"] and r.length("blip") == 2800  # the 0.06 s clip, padded


def test_fail_mode_names_the_first_unusable_file_in_one_line(tmp_path):
    """Under decode.on_error: fail the decode stage process stops at the first unusable file of the
    CSVs (here one the corpus stage found empty) before decoding anything: one line, exit 2."""
    _folder_project(tmp_path, "fail", FOLDER_ROWS)
    for stage in ("corpus", "configure"):
        assert _stage_in_process(stage, tmp_path) == 0, stage
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "stages.decode"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: clip 'empty' (corpus/empty.wav): audio file is empty (0 bytes) [empty]; "
        "set decode.on_error: skip to leave such clips out (stage decode)"
    ]
    assert not (tmp_path / "data/audio").exists() and not (tmp_path / "metrics/decode.json").exists()


def test_fail_mode_leaves_missing_files_to_data_strict(tmp_path):
    """A CSV row whose file is missing is the corpus stage's decision (data.strict): under
    decode.on_error: fail it is listed as skipped, and a NaN file then stops decode."""
    _folder_project(tmp_path, "fail", ["a.wav", "missing.wav", "blip.wav"])
    for stage in ("corpus", "configure", "decode"):
        assert _stage_in_process(stage, tmp_path) == 0, stage
    report = json.loads((tmp_path / "metrics/decode.json").read_text())
    assert [(s["clip_id"], s["stage"]) for s in report["skipped"]] == [("missing", "corpus")] and report["n_clips"] == 4
    _folder_project(tmp_path, "fail", ["a.wav", "nan.wav"])
    for stage in ("corpus", "configure"):
        assert _stage_in_process(stage, tmp_path) == 0, stage
    assert _stage_in_process("decode", tmp_path) == 2
