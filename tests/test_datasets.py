"""Tests for clapart_core.corpus (manifest, sources, build): folder corpora, the demo source, and manifest files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from clapart_core.corpus.build import build_manifest
from clapart_core.corpus.manifest import (
    MANIFEST_SCHEMA,
    ROOT_KEY,
    ManifestError,
    corpus_report,
    read_manifest,
    resolve_audio_path,
    write_manifest,
)
from clapart_core.corpus.sources import read_folder_corpus, scan_folder_corpus


def _wav(path: Path, seconds: float, sr: int = 16000, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros((int(seconds * sr), channels)), sr, subtype="PCM_16")


def _csv(path: Path, header: str, *rows: str) -> None:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


HEADER = "file_name,caption_1,caption_2,caption_3"


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    """Train + val (no test.csv); one 44.1 kHz stereo file; one empty caption; nested folders."""
    root = tmp_path / "corpus"
    _wav(root / "dev" / "a.wav", 1.5)
    _wav(root / "dev" / "b.flac", 2.0, sr=44100, channels=2)
    _wav(root / "eval" / "c.wav", 0.5)
    root.mkdir(exist_ok=True)
    _csv(root / "train.csv", HEADER,
         'dev/a.wav,A dog barks.,"A dog, barking.",Barking',
         "dev/b.flac,Rain falls.,  ,Rain.")
    _csv(root / "val.csv", HEADER, "eval/c.wav,A beep.,A tone.,A high beep.")
    return root


def test_folder_round_trip(corpus: Path, tmp_path: Path) -> None:
    table, report = scan_folder_corpus(corpus)
    assert table.schema.remove_metadata().equals(MANIFEST_SCHEMA)
    rows = table.to_pylist()
    assert [r["clip_id"] for r in rows] == ["dev/a", "dev/b", "eval/c"]
    assert [r["split"] for r in rows] == ["train", "train", "val"]
    assert rows[0]["captions"] == ["A dog barks.", "A dog, barking.", "Barking"]
    assert rows[1]["captions"] == ["Rain falls.", "Rain."]  # whitespace-only caption dropped
    assert [r["duration_s"] for r in rows] == pytest.approx([1.5, 2.0, 0.5])
    assert report.missing_splits == ("test",) and report.dropped_empty_captions == 1 and report.ok
    assert report.clips_per_split == {"train": 2, "val": 1}
    assert corpus_report(table)["dropped_empty_captions"] == 1

    out = tmp_path / "out" / "manifest.parquet"
    write_manifest(table, out)
    back, root = read_manifest(out)
    assert root.resolve() == corpus.resolve()
    assert back.to_pylist() == rows
    assert resolve_audio_path(root, rows[1]["audio_path"]).is_file()
    assert [p.name for p in out.parent.iterdir()] == ["manifest.parquet"]  # no temp left


def test_predictions_name_a_folder_corpus_clip_by_its_csv_file_name(corpus: Path, tmp_path: Path) -> None:
    """manifest.file_names: the file_name column of the corpus CSV (the id `clapart evaluate` matches), after a round trip."""
    from clapart_core.corpus.manifest import file_names

    table, _ = scan_folder_corpus(corpus)
    write_manifest(table, tmp_path / "manifest.parquet")
    back, _ = read_manifest(tmp_path / "manifest.parquet")
    assert file_names(back) == {"dev/a": "dev/a.wav", "dev/b": "dev/b.flac", "eval/c": "eval/c.wav"}


def test_relative_root_survives_moving_cwd(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    table = read_folder_corpus(Path("corpus"))
    write_manifest(table, Path("data/m.parquet"))
    assert pq.read_schema("data/m.parquet").metadata[ROOT_KEY] == b"../corpus"
    monkeypatch.chdir(tmp_path / "data")
    _, root = read_manifest("m.parquet")
    assert root.resolve() == corpus.resolve()


def test_missing_and_unlisted_audio(corpus: Path) -> None:
    (corpus / "dev" / "a.wav").unlink()
    _wav(corpus / "extra" / "stray.wav", 0.2)
    (corpus / "extra" / "notes.txt").write_text("not audio, not reported")
    (corpus / "eval" / "c.wav").write_bytes(b"garbage bytes, not audio" * 4)
    # Audio that no CSV names is a mistake caught before any long stage: one line naming it.
    with pytest.raises(ManifestError, match=r"1 audio file\(s\) are not named by any CSV: extra/stray\.wav .*data\.allow_unlisted"):
        scan_folder_corpus(corpus)
    table, report = scan_folder_corpus(corpus, allow_unlisted=True)
    assert table.column("clip_id").to_pylist() == ["dev/b"]
    assert report.missing_audio == ("dev/a.wav",)
    assert report.unreadable_audio == ("eval/c.wav (unreadable)",)
    assert report.unlisted_audio == ("extra/stray.wav",)
    stored = corpus_report(table)
    assert stored["n_missing_audio"] == 1 and stored["n_unlisted_audio"] == 1
    with pytest.raises(ManifestError, match=r"missing: dev/a\.wav.*unreadable"):
        scan_folder_corpus(corpus, strict=True, allow_unlisted=True)


@pytest.mark.parametrize(
    ("header", "row", "match"),
    [
        ("file_name,text", "dev/a.wav,hello", r"train\.csv: missing column 'caption_1'"),
        ("path,caption_1", "dev/a.wav,hello", r"train\.csv: missing column 'file_name'"),
        (HEADER, "../outside.wav,a,b,c", r"train\.csv line 2: .*escapes the corpus root"),
        (HEADER, "/etc/passwd.wav,a,b,c", r"escapes the corpus root"),
        (HEADER, "dev/a.wav, , ,", r"train\.csv line 2: clip 'dev/a\.wav' has no non-empty caption"),
        (HEADER, "dev/a.wav,a,b", r"train\.csv line 2: 3 fields, header has 4"),
    ],
)
def test_csv_errors(corpus: Path, header: str, row: str, match: str) -> None:
    _csv(corpus / "train.csv", header, row)
    with pytest.raises(ManifestError, match=match):
        read_folder_corpus(corpus)


def test_duplicate_clip_ids_name_both_places(corpus: Path) -> None:
    _csv(corpus / "test.csv", HEADER, "dev/a.wav,x,y,z")
    with pytest.raises(ManifestError, match=r"test\.csv line 2: duplicate clip id 'dev/a'.*train\.csv line 2"):
        read_folder_corpus(corpus)
    # Same stem, different extension: still one clip id.
    _wav(corpus / "dev" / "a.flac", 0.1)
    _csv(corpus / "test.csv", HEADER, "dev/a.flac,x,y,z")
    with pytest.raises(ManifestError, match=r"duplicate clip id 'dev/a' \(dev/a\.flac\)"):
        read_folder_corpus(corpus)


def test_train_csv_required(tmp_path: Path) -> None:
    (tmp_path / "val.csv").write_text(HEADER + "\n")
    with pytest.raises(ManifestError, match=r"train\.csv: missing"):
        read_folder_corpus(tmp_path)


def test_resolve_audio_path_refuses_escape(tmp_path: Path) -> None:
    assert resolve_audio_path(tmp_path, "a/b.wav") == tmp_path / "a" / "b.wav"
    for bad in ("../x.wav", "a/../../x.wav", "/abs/x.wav", "C:\\x.wav", ""):
        with pytest.raises(ManifestError, match=str(tmp_path)):
            resolve_audio_path(tmp_path, bad)


def test_build_manifest_demo_and_sources(tmp_path: Path) -> None:
    table = build_manifest("demo", tmp_path / "demo", n_clips=20, seed=5)
    assert table.num_rows == 20
    assert set(table.column("split").to_pylist()) == {"train", "val", "test"}
    assert all(len(c) == 5 for c in table.column("captions").to_pylist())
    assert set(table.column("duration_s").to_pylist()) == {4.0}
    assert table.schema.metadata[b"clapart.source"] == b"demo"
    # The same corpus read as a plain folder gives the same rows.
    assert read_folder_corpus(tmp_path / "demo").to_pylist() == table.to_pylist()
    with pytest.raises(ValueError, match="supported sources: demo, folder, clotho, audiocaps"):
        build_manifest("nosuch", tmp_path)
    with pytest.raises(ValueError, match="unknown option"):
        build_manifest("demo", tmp_path / "d2", n_clip=20)
    with pytest.raises(ValueError, match="takes no options"):
        build_manifest("folder", tmp_path / "demo", n_clips=3)


def test_read_manifest_rejects_bad_files(tmp_path: Path, corpus: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nope.parquet")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match="junk.parquet: not a readable Parquet"):
        read_manifest(junk)
    table = read_folder_corpus(corpus)
    no_dur = tmp_path / "nodur.parquet"
    pq.write_table(table.drop_columns(["duration_s"]), no_dur)
    with pytest.raises(ManifestError, match="nodur.parquet: missing column 'duration_s'"):
        read_manifest(no_dur)
    dup = pa.concat_tables([table, table.slice(0, 1)])
    with pytest.raises(ManifestError, match="duplicate clip_id 'dev/a'"):
        write_manifest(dup, tmp_path / "dup.parquet")
    assert not (tmp_path / "dup.parquet").exists()


@pytest.mark.parametrize(
    ("mistake", "expected"),
    [
        ("missing_column", r"train\.csv: missing column"),
        ("unlisted_audio", r"not named by any CSV: dev/stray\.wav"),
    ],
)
def test_corpus_stage_reports_user_mistakes_in_one_line(corpus: Path, tmp_path: Path, mistake: str, expected: str) -> None:
    """The corpus stage turns a bad corpus into one error line and exit code 2, no traceback."""
    import os
    import re
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    if mistake == "missing_column":
        _csv(corpus / "train.csv", "name,caption_1", "dev/a.wav,A dog barks.")
    else:
        _wav(corpus / "dev" / "stray.wav", 0.3)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"].update(source="folder", root=str(corpus))
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-m", "stages.corpus"], cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and last.endswith(" (stage corpus)") and re.search(expected, last), proc.stderr
    assert not (project / "data/corpus/manifest.parquet").exists()
