"""Tests for clapart_core.corpus.demo: determinism, coverage, and captions that match the audio."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapart_core.corpus.demo import (
    KINDS,
    LAYOUTS,
    LEVELS,
    DemoClip,
    caption_vocabulary,
    demo_scenes,
    generate_demo_corpus,
    read_scenes,
    synthesize_clip,
)
from clapart_core.pipeline.params import SPLITS

SR = 16000
SECONDS = 4.0
SEED = 1115

# Words that must name each kind in every caption mentioning it.
KIND_WORDS = {
    "beep": r"\b(beep|tone)\b", "hum": r"\bhum\b", "siren": r"\bsiren\b", "rain": r"\brain\b",
    "rumble": r"\b(rumble|rumbling)\b", "clock": r"\bclock\b", "clicking": r"\b(clicking|clicks)\b",
    "knock": r"\bknocks?\b", "chirp": r"\bbird\b", "bark": r"\bdog\b",
}
COUNT_WORDS = {1: r"\b(single|once)\b", 2: r"\b(two|twice)\b", 3: r"\bthree\b", 4: r"\bfour\b"}


@pytest.fixture(scope="module")
def scenes() -> list[DemoClip]:
    return demo_scenes(400, SECONDS, SEED)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_byte_deterministic(tmp_path: Path) -> None:
    generate_demo_corpus(tmp_path / "a", n_clips=20, seed=7)
    generate_demo_corpus(tmp_path / "b", n_clips=20, seed=7)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len([k for k in a if k.endswith(".wav")]) == 20
    assert a == b
    generate_demo_corpus(tmp_path / "c", n_clips=20, seed=8)
    assert _files(tmp_path / "c")["train.csv"] != a["train.csv"]


def test_written_layout_and_format(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    generate_demo_corpus(root, n_clips=20, seed=3)
    clips = read_scenes(root)
    assert clips == demo_scenes(20, SECONDS, 3)
    rows = []
    for split in SPLITS:
        with open(root / f"{split}.csv", newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            assert reader.fieldnames == ["file_name"] + [f"caption_{k}" for k in range(1, 6)]
            rows += [(split, r) for r in reader]
    assert len(rows) == 20
    by_name = {c.file_name: c for c in clips}
    for split, row in rows:
        clip = by_name[row["file_name"]]
        assert row["file_name"] == f"audio/{split}/{clip.name}.wav" and clip.split == split
        assert tuple(row[f"caption_{k}"] for k in range(1, 6)) == clip.captions
        info = sf.info(str(root / row["file_name"]))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (SR, 1, 64000, "PCM_16")
        wave, _ = sf.read(str(root / row["file_name"]))
        assert np.abs(wave).max() < 0.95


def test_regenerate_replaces_previous_demo_and_refuses_foreign_folder(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    generate_demo_corpus(root, n_clips=20, seed=1)
    generate_demo_corpus(root, n_clips=10, seed=1)
    assert len(list(root.rglob("*.wav"))) == 10
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="mine"):
        generate_demo_corpus(foreign, n_clips=10)
    assert (foreign / "keep.txt").exists()


def test_coverage_kinds_layouts_splits(scenes: list[DemoClip]) -> None:
    kinds = Counter(e.kind for c in scenes for e in c.events)
    assert set(kinds) == set(KINDS) and len(kinds) >= 8
    assert min(kinds.values()) >= 40
    assert {len(c.events) for c in scenes} == {1, 2, 3}
    assert {e.count for c in scenes for e in c.events if e.kind == "knock"} == {2, 3, 4}
    assert {e.loudness for c in scenes for e in c.events} == set(LEVELS)
    # Splits: 70/15/15, and every split shows every layout in about the same proportion.
    split_n = Counter(c.split for c in scenes)
    assert split_n == {"train": 280, "val": 60, "test": 60}
    for split in SPLITS:
        mix = Counter(c.layout for c in scenes if c.split == split)
        for layout in LAYOUTS:
            overall = sum(c.layout == layout for c in scenes) / len(scenes)
            assert abs(mix[layout] / split_n[split] - overall) < 0.05, (split, layout)
    # Assignment is random, not by index blocks.
    train_idx = [c.index for c in scenes if c.split == "train"]
    assert train_idx != list(range(280))
    assert max(c.index for c in scenes if c.split == "test") > 300
    assert min(c.index for c in scenes if c.split == "test") < 100


def test_captions_state_the_scene_facts(scenes: list[DemoClip]) -> None:
    for clip in scenes:
        assert len(clip.captions) == 5 and len(set(clip.captions)) == 5
        loudness = {e.loudness for e in clip.events}
        for cap in clip.captions:
            low = cap.lower()
            assert cap[0].isupper() and cap.endswith(".")
            for ev in clip.events:
                assert re.search(KIND_WORDS[ev.kind], low), (cap, ev)
                if ev.count is not None:
                    assert re.search(COUNT_WORDS[ev.count], low), (cap, ev)
            for kind in set(KINDS) - {e.kind for e in clip.events}:
                assert not re.search(KIND_WORDS[kind], low), (cap, kind)
            assert bool(re.search(r"\bloud(ly)?\b", low)) == ("loud" in loudness), cap
            assert bool(re.search(r"\b(quiet|faint|soft)(ly)?\b", low)) == ("quiet" in loudness), cap
            if clip.layout in ("sequence", "sequence3", "sequence_over"):
                assert re.search(r"\b(then|followed|after)\b", low), cap
            if any(e.background for e in clip.events):
                assert re.search(r"\b(while|as|background|over)\b", low), cap


def test_vocabulary_is_modest(scenes: list[DemoClip]) -> None:
    used = {w for c in scenes for cap in c.captions for w in re.findall(r"[a-z][a-z\-]*", cap.lower())}
    assert used <= caption_vocabulary()
    assert 60 <= len(used) <= 200


def _first(scenes: list[DemoClip], kind: str, loudness: str | None = None) -> DemoClip:
    return next(
        c for c in scenes
        if c.layout == "single" and c.events[0].kind == kind and loudness in (None, c.events[0].loudness)
    )


def _spectrum(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    return np.fft.rfftfreq(len(x), 1 / SR), spec


def test_audio_matches_caption_pitch_and_timing(scenes: list[DemoClip]) -> None:
    for kind, lo, hi in (("beep", 2800, 3200), ("hum", 95, 125)):
        clip = _first(scenes, kind)
        ev = clip.events[0]
        wave = synthesize_clip(clip, SECONDS, SR, SEED)
        a, b = int(ev.start_s * SR), int(ev.end_s * SR)
        freqs, spec = _spectrum(wave[a:b])
        dom = freqs[spec.argmax()]
        assert lo <= dom <= hi and abs(dom - ev.freq_hz) < 5, (kind, dom, ev.freq_hz)
        inside = np.sqrt(np.mean(wave[a + 800 : b - 800] ** 2))
        outside = np.sqrt(np.mean(np.concatenate([wave[: a - 800], wave[b + 800 :]]) ** 2))
        assert 20 * np.log10(inside / outside) > 25  # the event is where the scene says


def test_kinds_occupy_their_bands(scenes: list[DemoClip]) -> None:
    def centroid(kind: str) -> float:
        clip = _first(scenes, kind)
        ev = clip.events[0]
        seg = synthesize_clip(clip, SECONDS, SR, SEED)[int(ev.start_s * SR) : int(ev.end_s * SR)]
        freqs, spec = _spectrum(seg)
        return float((freqs * spec).sum() / spec.sum())

    c = {k: centroid(k) for k in KINDS}
    assert c["rumble"] < 300 and c["hum"] < 300 and c["knock"] < 450
    assert 600 < c["siren"] < 1500 and 600 < c["bark"] < 1500 and 800 < c["clicking"] < 2000
    assert c["rain"] > 3000 and 3000 < c["chirp"] < 5000 and 2000 < c["clock"] < 4500
    assert 2800 < c["beep"] < 3200


def test_loudness_words_are_absolute_levels(scenes: list[DemoClip]) -> None:
    def rms_db(clip: DemoClip) -> float:
        ev = clip.events[0]
        wave = synthesize_clip(clip, SECONDS, SR, SEED)
        return 20 * np.log10(np.sqrt(np.mean(wave[int(ev.start_s * SR) : int(ev.end_s * SR)] ** 2)))

    loud, quiet = rms_db(_first(scenes, "beep", "loud")), rms_db(_first(scenes, "beep", "quiet"))
    assert abs((loud - quiet) - 20 * np.log10(LEVELS["loud"] / LEVELS["quiet"])) < 1.0


def test_no_clip_is_silent_or_clipping(scenes: list[DemoClip]) -> None:
    for clip in scenes[:60]:
        wave = synthesize_clip(clip, SECONDS, SR, SEED)
        frames = wave[: len(wave) // 1600 * 1600].reshape(-1, 1600)
        assert np.sqrt((frames**2).mean(axis=1)).min() > 5e-4  # noise floor everywhere
        assert np.abs(wave).max() < 0.95


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="splits"):
        demo_scenes(10, splits=(0.5, 0.5, 0.0))
    with pytest.raises(ValueError, match="too few"):
        demo_scenes(5)
    with pytest.raises(ValueError, match="clip_seconds"):
        demo_scenes(20, clip_seconds=1.0)


def test_layout_weights_draw_another_event_mix(tmp_path):
    """A second demo corpus for the codebooks (params codebook_corpus): only the named layouts; the default mix unchanged."""
    from typer.testing import CliRunner

    from clapart_core.cli import app
    from clapart_core.corpus.demo import demo_scenes, read_scenes

    busy = demo_scenes(40, 4.0, 7, layout_weights={"sequence3": 1, "sequence_over": 1})
    assert {c.layout for c in busy} == {"sequence3", "sequence_over"}
    assert demo_scenes(40, 4.0, 7, layout_weights=None) == demo_scenes(40, 4.0, 7)
    out = CliRunner().invoke(app, ["demo-corpus", str(tmp_path / "b"), "--clips", "10", "--seed", "7", "--layout", "sequence3=1"])
    assert out.exit_code == 0, out.output
    assert {c.layout for c in read_scenes(tmp_path / "b")} == {"sequence3"} and (tmp_path / "b/train.csv").is_file()
    bad = CliRunner().invoke(app, ["demo-corpus", str(tmp_path / "c"), "--layout", "crowd=1"])
    assert bad.exit_code == 2 and "unknown layout 'crowd'" in bad.output
