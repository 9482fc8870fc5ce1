"""Tests for the ``clotho`` and ``audiocaps`` sources: aac-datasets' on-disk layouts -> manifest."""

from __future__ import annotations

import csv
import logging
import shutil
import sys
import types
import urllib.error
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapart_core.corpus.build import build_manifest
from clapart_core.corpus.download import DatasetDownloadError
from clapart_core.corpus.manifest import MANIFEST_SCHEMA, ManifestError, corpus_report, read_manifest, resolve_audio_path, write_manifest
from clapart_core.corpus.sources import audiocaps_paths, clotho_paths, scan_audiocaps_corpus, scan_clotho_corpus

CLOTHO_HEADER = ["file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5"]
AUDIOCAPS_HEADER = ["audiocap_id", "youtube_id", "start_time", "caption"]
# Clotho file names really contain spaces, commas and non-ASCII letters.
CLOTHO_CLIPS = {
    "train": [("Rain, on a roof.wav", 1.0), ("Café terrace.wav", 0.5)],
    "val": [("door slam 01.wav", 0.75)],
    "test": [("birds  at dawn.wav", 0.25)],
}


def _audio(path: Path, seconds: float, sr: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(round(seconds * sr)), dtype=np.float32), sr, subtype="PCM_16")


def _write_csv(path: Path, header: list[str], rows: list[list[str]], encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding=encoding, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _clotho_caps(name: str) -> list[str]:
    stem = name.removesuffix(".wav")
    return [f"{stem} caption {i}" for i in range(1, 6)]


def _write_clotho_split(root: Path, split: str, encoding: str = "utf-8") -> None:
    csv_path, audio_dir = clotho_paths(root, split)
    audio_dir.mkdir(parents=True, exist_ok=True)
    for name, seconds in CLOTHO_CLIPS[split]:
        _audio(audio_dir / name, seconds, 44_100)
    _write_csv(csv_path, CLOTHO_HEADER, [[name, *_clotho_caps(name)] for name, _ in CLOTHO_CLIPS[split]], encoding)


@pytest.fixture()
def clotho_root(tmp_path: Path) -> Path:
    root = tmp_path / "aac"
    for split in ("train", "val", "test"):
        _write_clotho_split(root, split)
    return root


# AudioCaps: one caption per CSV line; val/test clips have 5 (deliberately interleaved here),
# train clips 1. "gone" is a clip whose YouTube video was unavailable: listed, not on disk.
AUDIOCAPS_ROWS = {
    "train": [
        ["91139", "-0Gj8-vB1q4", "30", "A man speaks  while a car passes"],
        ["58146", "gone_video1", "0", "Birds chirp"],
        ["11006", "zzRoLKr5xYo", "120", "Water runs from a tap"],
    ],
    "val": [
        [str(100 + i), yt, "10", f"{yt} caption {i // 2 + 1}"]
        for i, yt in enumerate(["valclipAAAA", "valclipBBBB"] * 5)
    ],
    "test": [[str(200 + i), "testclipCCC", "5", f"test caption {i + 1}"] for i in range(5)],
}
AUDIOCAPS_ON_DISK = {
    "train": {"-0Gj8-vB1q4_30.flac": 1.0, "zzRoLKr5xYo_120.flac": 0.5},
    "val": {"valclipAAAA_10.flac": 0.25, "valclipBBBB_10.flac": 0.75},
    "test": {"testclipCCC_5.flac": 1.5},
}


def _write_audiocaps_split(root: Path, split: str) -> None:
    csv_path, audio_dir = audiocaps_paths(root, split)
    audio_dir.mkdir(parents=True, exist_ok=True)
    for name, seconds in AUDIOCAPS_ON_DISK[split].items():
        _audio(audio_dir / name, seconds, 32_000)
    _write_csv(csv_path, AUDIOCAPS_HEADER, AUDIOCAPS_ROWS[split])


@pytest.fixture()
def audiocaps_root(tmp_path: Path) -> Path:
    root = tmp_path / "aac"
    for split in ("train", "val", "test"):
        _write_audiocaps_split(root, split)
    return root


@pytest.fixture()
def no_aac_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import aac_datasets`` fail even where the optional extra is installed."""
    monkeypatch.setitem(sys.modules, "aac_datasets", None)


# --------------------------------------------------------------------------------------------
# Clotho


def test_clotho_layout_to_manifest(clotho_root: Path, tmp_path: Path, no_aac_datasets: None) -> None:
    table, report = scan_clotho_corpus(clotho_root)
    assert table.schema.remove_metadata().equals(MANIFEST_SCHEMA)
    rows = table.to_pylist()
    base = "CLOTHO_v2.1/clotho_audio_files"
    assert [(r["split"], r["audio_path"]) for r in rows] == [
        ("train", f"{base}/development/Rain, on a roof.wav"),
        ("train", f"{base}/development/Café terrace.wav"),
        ("val", f"{base}/validation/door slam 01.wav"),
        ("test", f"{base}/evaluation/birds  at dawn.wav"),  # double space kept: it is the file name
    ]
    assert rows[0]["clip_id"] == f"{base}/development/Rain, on a roof"
    assert rows[1]["captions"] == [f"Café terrace caption {i}" for i in range(1, 6)]
    assert rows[3]["captions"][0] == "birds at dawn caption 1"  # caption whitespace collapsed
    assert [r["duration_s"] for r in rows] == pytest.approx([1.0, 0.5, 0.75, 0.25], abs=1e-4)
    assert report.ok and report.clips_per_split == {"train": 2, "val": 1, "test": 1}
    stored = corpus_report(table)
    assert stored["captions_per_clip"] == {"train": {"5": 2}, "val": {"5": 1}, "test": {"5": 1}}
    assert stored["dataset"] == "clotho" and stored["version"] == "v2.1"
    assert table.schema.metadata[b"clapart.source"] == b"clotho"

    # The manifest file round-trips and its paths open the right files.
    out = tmp_path / "data" / "manifest.parquet"
    write_manifest(build_manifest("clotho", clotho_root), out)
    back, root = read_manifest(out)
    assert back.to_pylist() == rows
    assert all(resolve_audio_path(root, p).is_file() for p in back.column("audio_path").to_pylist())


def test_predictions_name_a_clotho_clip_by_its_bare_file_name(clotho_root: Path, no_aac_datasets: None) -> None:
    """Clotho's CSVs (and DCASE submissions) name clips by the bare file name, spaces and commas included."""
    from clapart_core.corpus.manifest import file_names

    table, _ = scan_clotho_corpus(clotho_root)
    names = file_names(table)
    assert sorted(names.values()) == sorted(["Rain, on a roof.wav", "Café terrace.wav", "door slam 01.wav", "birds  at dawn.wav"])
    with clotho_paths(clotho_root, "test")[0].open(newline="", encoding="utf-8") as f:
        csv_names = [row["file_name"] for row in csv.DictReader(f)]
    test_ids = [c for c, s in zip(table.column("clip_id").to_pylist(), table.column("split").to_pylist(), strict=True) if s == "test"]
    assert [names[c] for c in test_ids] == csv_names


def test_clotho_csv_encoding_quirks(clotho_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A UTF-8 byte-order mark must not end up in the first column name, and an ISO-8859-1
    # file (the encoding of Clotho's metadata CSVs) decodes with a warning instead of failing.
    _write_clotho_split(clotho_root, "train", encoding="utf-8-sig")
    _write_csv(
        clotho_paths(clotho_root, "val")[0],
        CLOTHO_HEADER,
        [["door slam 01.wav", "A café door slams", "b", "c", "d", "e"]],
        encoding="iso-8859-1",
    )
    with caplog.at_level(logging.WARNING, logger="clapart_core.corpus.sources"):
        table, _ = scan_clotho_corpus(clotho_root)
    caps = dict(zip(table.column("split").to_pylist(), table.column("captions").to_pylist(), strict=False))
    assert caps["val"][0] == "A café door slams"
    assert "clotho_captions_validation.csv: not valid UTF-8" in caplog.text
    assert table.num_rows == 4


def test_clotho_v1_has_no_validation_split(tmp_path: Path) -> None:
    root = tmp_path / "aac"
    for split in ("train", "test"):
        csv_path, audio_dir = clotho_paths(root, split, version="v1")
        for name, seconds in CLOTHO_CLIPS[split]:
            _audio(audio_dir / name, seconds, 44_100)
        _write_csv(csv_path, CLOTHO_HEADER, [[n, *_clotho_caps(n)] for n, _ in CLOTHO_CLIPS[split]])
    table, report = scan_clotho_corpus(root, version="v1")
    assert report.missing_splits == ("val",)
    assert table.column("split").to_pylist() == ["train", "train", "test"]
    assert table.column("audio_path").to_pylist()[0].startswith("CLOTHO_v1/clotho_audio_files/development/")


# --------------------------------------------------------------------------------------------
# AudioCaps


def test_audiocaps_groups_captions_and_reports_missing_clips(
    audiocaps_root: Path, no_aac_datasets: None
) -> None:
    base = "AUDIOCAPS/audio_32000Hz"
    # Audio of another dataset sharing the aac-datasets root is not "unlisted AudioCaps audio";
    # a stray file inside an AudioCaps split folder is.
    _audio(audiocaps_root / "CLOTHO_v2.1" / "clotho_audio_files" / "development" / "x.wav", 0.1, 16_000)
    _audio(audiocaps_root / "AUDIOCAPS" / "audio_32000Hz" / "val" / "stray_0.flac", 0.1, 32_000)

    with pytest.raises(ManifestError, match=r"not named by any CSV: AUDIOCAPS/audio_32000Hz/val/stray_0\.flac"):
        scan_audiocaps_corpus(audiocaps_root)
    table, report = scan_audiocaps_corpus(audiocaps_root, allow_unlisted=True)
    rows = {r["clip_id"]: r for r in table.to_pylist()}
    assert list(rows) == [
        f"{base}/train/-0Gj8-vB1q4_30",
        f"{base}/train/zzRoLKr5xYo_120",
        f"{base}/val/valclipAAAA_10",
        f"{base}/val/valclipBBBB_10",
        f"{base}/test/testclipCCC_5",
    ]
    assert rows[f"{base}/train/-0Gj8-vB1q4_30"]["captions"] == ["A man speaks while a car passes"]
    assert rows[f"{base}/val/valclipBBBB_10"]["captions"] == [f"valclipBBBB caption {i}" for i in range(1, 6)]
    assert rows[f"{base}/test/testclipCCC_5"]["captions"] == [f"test caption {i}" for i in range(1, 6)]
    assert rows[f"{base}/val/valclipAAAA_10"]["audio_path"] == f"{base}/val/valclipAAAA_10.flac"
    assert [r["duration_s"] for r in rows.values()] == pytest.approx([1.0, 0.5, 0.25, 0.75, 1.5], abs=1e-4)

    assert report.missing_audio == (f"{base}/train/gone_video1_0.flac",)
    assert report.unlisted_audio == (f"{base}/val/stray_0.flac",)
    assert report.clips_per_split == {"train": 2, "val": 2, "test": 1}
    stored = corpus_report(table)
    assert stored["n_missing_audio"] == 1
    assert stored["listed_per_split"] == {"train": 3, "val": 2, "test": 1}
    assert stored["captions_per_clip"] == {"train": {"1": 2}, "val": {"5": 2}, "test": {"5": 1}}
    assert table.schema.metadata[b"clapart.source"] == b"audiocaps"

    with pytest.raises(ManifestError, match=r"1 audio file\(s\) named in the CSVs are missing: .*gone_video1_0\.flac"):
        build_manifest("audiocaps", audiocaps_root, strict=True, allow_unlisted=True)


def test_audiocaps_legacy_csv_location_and_other_rate(tmp_path: Path) -> None:
    # aac-datasets still prefers AUDIOCAPS/{split}.csv for v1 when present (older downloads),
    # and names the audio folder after the sample rate it was fetched at.
    root = tmp_path / "aac"
    for split in ("train", "val", "test"):
        _write_csv(root / "AUDIOCAPS" / f"{split}.csv", AUDIOCAPS_HEADER, AUDIOCAPS_ROWS[split])
        for name, seconds in AUDIOCAPS_ON_DISK[split].items():
            _audio(root / "AUDIOCAPS" / "audio_16000Hz" / split / name, seconds, 16_000)
    table = build_manifest("audiocaps", root, sample_rate=16_000)
    assert table.num_rows == 5
    assert table.column("audio_path").to_pylist()[0] == "AUDIOCAPS/audio_16000Hz/train/-0Gj8-vB1q4_30.flac"
    assert table.column("duration_s").to_pylist()[-1] == pytest.approx(1.5)


# --------------------------------------------------------------------------------------------
# Layout and CSV errors: one line naming the file and the problem


def _drop_column(csv_path: Path, column: str) -> None:
    with open(csv_path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    i = rows[0].index(column)
    _write_csv(csv_path, rows[0][:i] + rows[0][i + 1 :], [r[:i] + r[i + 1 :] for r in rows[1:]])


ERROR_CASES: list[tuple[str, Callable[[Path], None], str]] = [
    (
        "clotho",
        lambda root: _drop_column(clotho_paths(root, "val")[0], "caption_5"),
        r"clotho_captions_validation\.csv: missing column\(s\) 'caption_5' \(found: file_name, caption_1",
    ),
    (
        "clotho",
        lambda root: clotho_paths(root, "test")[0].unlink(),
        r"clotho_csv_files/clotho_captions_evaluation\.csv: missing captions CSV; "
        r"expected Clotho .*aac-datasets-download",
    ),
    (
        "clotho",
        lambda root: shutil.rmtree(clotho_paths(root, "val")[1]),
        r"clotho_audio_files/validation: missing audio folder",
    ),
    (
        "audiocaps",
        lambda root: _drop_column(audiocaps_paths(root, "train")[0], "start_time"),
        r"csv_files_v1/train\.csv: missing column\(s\) 'start_time'",
    ),
    (
        "audiocaps",
        lambda root: _write_csv(audiocaps_paths(root, "test")[0], AUDIOCAPS_HEADER, [["1", "abc", "7.5", "x"]]),
        r"csv_files_v1/test\.csv line 2: start_time '7\.5' is not a whole number",
    ),
    (
        "audiocaps",
        lambda root: _write_csv(audiocaps_paths(root, "val")[0], AUDIOCAPS_HEADER, [["1", "abc", "3", "  "]]),
        r"csv_files_v1/val\.csv line 2: clip 'abc_3\.flac' has no non-empty caption",
    ),
]


@pytest.mark.parametrize(("source", "damage", "match"), ERROR_CASES)
def test_layout_and_csv_errors(tmp_path: Path, source: str, damage: Callable[[Path], None], match: str) -> None:
    root = tmp_path / "aac"
    for split in ("train", "val", "test"):
        (_write_clotho_split if source == "clotho" else _write_audiocaps_split)(root, split)
    damage(root)
    with pytest.raises(ManifestError, match=match) as info:
        build_manifest(source, root)
    assert "\n" not in str(info.value)


def test_missing_root_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"nowhere: corpus root is not a folder; expected AudioCaps"):
        build_manifest("audiocaps", tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"source 'clotho' got unknown option\(s\) sample_rate; allowed: version"):
        build_manifest("clotho", tmp_path, sample_rate=16_000)
    with pytest.raises(ValueError, match="unknown Clotho version 'v3'"):
        build_manifest("clotho", tmp_path, version="v3")
    with pytest.raises(ValueError, match="source 'folder' cannot be downloaded"):
        build_manifest("folder", tmp_path, download=True)


# --------------------------------------------------------------------------------------------
# download=True


def test_download_without_aac_datasets_says_what_to_install(tmp_path: Path, no_aac_datasets: None) -> None:
    expected = r"pip install 'clapart\[datasets\]'.*aac-datasets-download"
    with pytest.raises(DatasetDownloadError, match=expected) as info:
        build_manifest("clotho", tmp_path / "fresh", download=True)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "fresh").exists()  # nothing half-made before the package check


def test_download_skips_a_prepared_root_without_the_package(clotho_root: Path, no_aac_datasets: None) -> None:
    assert build_manifest("clotho", clotho_root, download=True).num_rows == 4


def _fake_aac_datasets(monkeypatch: pytest.MonkeyPatch, **functions: Callable[..., None]) -> None:
    """Install a minimal stand-in for aac-datasets exposing the functions ``download_corpus`` imports."""
    names = ["aac_datasets", "aac_datasets.datasets", "aac_datasets.datasets.functional", "aac_datasets.utils"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    clotho = types.ModuleType("aac_datasets.datasets.functional.clotho")
    audiocaps = types.ModuleType("aac_datasets.datasets.functional.audiocaps")
    globals_ = types.ModuleType("aac_datasets.utils.globals")
    for name, fn in functions.items():
        target = clotho if "clotho" in name else audiocaps if "audiocaps" in name else globals_
        setattr(target, name, fn)
    for module in (clotho, audiocaps, globals_):
        monkeypatch.setitem(sys.modules, module.__name__, module)


def test_download_fetches_only_missing_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "aac"
    _write_clotho_split(root, "train")
    _write_clotho_split(root, "val")
    calls: list[dict[str, object]] = []

    def download_clotho_dataset(**kwargs: object) -> None:
        calls.append(kwargs)
        _write_clotho_split(Path(str(kwargs["root"])), "test")  # what aac-datasets would extract

    _fake_aac_datasets(monkeypatch, download_clotho_dataset=download_clotho_dataset)
    table = build_manifest("clotho", root, download=True)
    assert [(c["subset"], c["version"], c["root"]) for c in calls] == [("eval", "v2.1", str(root))]
    assert table.column("split").to_pylist() == ["train", "train", "val", "test"]


def test_download_network_failure_is_one_clear_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def download_clotho_dataset(**kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    _fake_aac_datasets(monkeypatch, download_clotho_dataset=download_clotho_dataset)
    expected = r"downloading Clotho train into .* failed \(URLError: .*name resolution.*\); check that this machine"
    with pytest.raises(DatasetDownloadError, match=expected) as info:
        build_manifest("clotho", tmp_path / "aac", download=True)
    assert "\n" not in str(info.value)


def test_audiocaps_download_needs_ytdlp_and_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def download_audiocaps_dataset(**kwargs: object) -> None:
        raise AssertionError("must not start without yt-dlp")

    _fake_aac_datasets(
        monkeypatch,
        download_audiocaps_dataset=download_audiocaps_dataset,
        get_default_ytdlp_path=lambda: "no-such-yt-dlp-binary",
        get_default_ffmpeg_path=lambda: sys.executable,  # any existing executable
    )
    expected = r"downloading AudioCaps needs yt-dlp \(no-such-yt-dlp-binary\) on PATH"
    with pytest.raises(DatasetDownloadError, match=expected):
        build_manifest("audiocaps", tmp_path / "aac", download=True)
