"""Fault injection for the decode stage: every bad-input kind, with the exact outcome under
decode.on_error = fail and = skip (report contents included)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from clapart_core.corpus.decoded import ClipDecodeError, audio_path, decode_split
from clapart_core.pipeline.storage import RaggedReader

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
    sf.write(root / "short.wav", _tone(0.1, SR), SR)
    add("short", ("skip", "too_short"))
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
