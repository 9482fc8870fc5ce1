"""The full-size rehearsal, reduced: generated AudioCaps- and Clotho-layout roots are read by the
dataset readers with the right caption counts and durations, and profiles/paper-rehearsal.yaml
loads, passes the preflight on such a root and holds the full-size configurations."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml
from typer.testing import CliRunner

from clapart_core import cli
from clapart_core.captioner.model import ClapArtConfig, ClapArtForCaptioning, small_bart_config
from clapart_core.captioner.text import load_caption_tokenizer, train_caption_tokenizer
from clapart_core.corpus.build import build_manifest
from clapart_core.corpus.manifest import corpus_report
from clapart_core.corpus.rehearsal import (
    DEFAULT_AUDIOCAPS,
    DEFAULT_CLOTHO,
    TOKENIZER_DIR,
    generate_rehearsal_corpora,
    rehearsal_clips,
    training_captions,
)
from clapart_core.pipeline.config import preflight
from clapart_core.pipeline.params import phase_params

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "paper-rehearsal.yaml"
SIZES_AC, SIZES_CL = (2, 1, 1), (1, 1, 1)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny rehearsal roots (3-4 s clips) with a small padded tokenizer, under ``data/rehearsal``."""
    root = tmp_path_factory.mktemp("project") / "data" / "rehearsal"
    clips = generate_rehearsal_corpora(root, SIZES_AC, SIZES_CL, seed=3, audiocaps_seconds=(3.0, 3.0), clotho_seconds=(3.0, 4.0), progress=False)
    # what `clapart rehearsal-corpus` adds, at 2000 ids instead of BART's 50265
    train_caption_tokenizer(training_captions(clips), 2000, out_dir=root / TOKENIZER_DIR, pad_vocabulary=True)
    return root


def test_layouts_read_by_both_readers(tiny_root: Path) -> None:
    audiocaps = build_manifest("audiocaps", tiny_root, strict=True)
    report = corpus_report(audiocaps)
    assert report["clips_per_split"] == dict(zip(("train", "val", "test"), SIZES_AC, strict=True))
    # AudioCaps: 1 caption per training clip, 5 per val/test clip (one CSV line each)
    assert report["captions_per_clip"] == {"train": {"1": 2}, "val": {"5": 1}, "test": {"5": 1}}
    assert audiocaps.column("duration_s").to_pylist() == pytest.approx([3.0] * 4)
    paths = audiocaps.column("audio_path").to_pylist()
    assert all(p.startswith("AUDIOCAPS/audio_32000Hz/") and p.endswith(".flac") for p in paths)
    info = sf.info(str(tiny_root / paths[0]))
    assert (info.samplerate, info.channels, info.format) == (32_000, 1, "FLAC")

    clotho = build_manifest("clotho", tiny_root, strict=True)
    report = corpus_report(clotho)
    assert report["clips_per_split"] == {"train": 1, "val": 1, "test": 1}
    assert report["captions_per_clip"] == {"train": {"5": 1}, "val": {"5": 1}, "test": {"5": 1}}
    assert all(3.0 <= d <= 4.0 for d in clotho.column("duration_s").to_pylist())
    paths = clotho.column("audio_path").to_pylist()
    assert paths[0].startswith("CLOTHO_v2.1/clotho_audio_files/development/rehearsal 00000, ")  # a comma, as Clotho names have
    assert sf.info(str(tiny_root / paths[0])).samplerate == 44_100

    # the references are the rendered scene's captions (AudioCaps train: its first one)
    scenes = rehearsal_clips("audiocaps", SIZES_AC, seed=3, seconds=(3.0, 3.0))
    assert audiocaps.column("captions").to_pylist() == [list(c.captions) for c in scenes]
    assert [len(c.captions) for c in scenes] == [1, 1, 5, 5]


def test_generation_is_deterministic_and_guarded(tmp_path: Path) -> None:
    a = rehearsal_clips("clotho", (2, 1, 1), seed=5, seconds=(3.0, 9.0))
    b = rehearsal_clips("clotho", (3, 1, 1), seed=5, seconds=(3.0, 9.0))
    # clip i is the same scene and length whatever the split sizes (only its split may move)
    assert [(c.seconds, c.scene.events, c.scene.captions) for c in a] == [(c.seconds, c.scene.events, c.scene.captions) for c in b[:4]]
    assert {c.scene.captions for c in a}.isdisjoint(c.scene.captions for c in rehearsal_clips("audiocaps", (2, 1, 1), seed=5, seconds=(3.0, 9.0)))
    with pytest.raises(ValueError, match="every split needs a clip"):
        rehearsal_clips("audiocaps", (2, 0, 1))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="refusing"):
        generate_rehearsal_corpora(foreign, (1, 1, 1), (0, 0, 0), audiocaps_seconds=(3.0, 3.0), progress=False)


def test_cli_writes_full_length_clips(tmp_path: Path) -> None:
    out = tmp_path / "rh"
    result = CliRunner().invoke(cli.app, ["rehearsal-corpus", str(out), "--audiocaps", "1", "1", "1", "--clotho", "1", "1", "1", "--tokenizer-vocab", "0"])
    assert result.exit_code == 0, result.output
    assert "6 clips" in result.output
    assert build_manifest("audiocaps", out).column("duration_s").to_pylist() == pytest.approx([10.0] * 3)
    assert all(15.0 <= d <= 30.0 for d in build_manifest("clotho", out).column("duration_s").to_pylist())
    # a second run replaces its own output; the CLI's defaults are the module's
    again = ["rehearsal-corpus", str(out), "--audiocaps", "1", "1", "1", "--clotho", "0", "0", "0", "--tokenizer-vocab", "0"]
    assert CliRunner().invoke(cli.app, again).exit_code == 0
    assert not (out / "CLOTHO_v2.1").exists()
    defaults = inspect.signature(cli.rehearsal_corpus).parameters
    assert (defaults["audiocaps"].default, defaults["clotho"].default) == (DEFAULT_AUDIOCAPS, DEFAULT_CLOTHO)


def test_padded_tokenizer_has_barts_layout(tiny_root: Path) -> None:
    tokenizer = load_caption_tokenizer(tiny_root / TOKENIZER_DIR)
    assert len(tokenizer) == 2000 and tokenizer.mask_token_id == 1999
    ids = tokenizer("A dog barks twice, then a siren wails.")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and max(ids) < 1000  # reserved ids are never produced
    assert tokenizer.decode(ids, skip_special_tokens=True) == "A dog barks twice, then a siren wails."


def test_profile_is_full_size_and_passes_preflight(tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = yaml.safe_load(PROFILE.read_text())
    # BEATs_iter3_plus_AS2M.pt's configuration: 90,311,792 parameters under the official code
    beats = params["beats"]["random"]
    assert (beats["encoder_layers"], beats["encoder_embed_dim"], beats["encoder_ffn_embed_dim"], beats["encoder_attention_heads"]) == (12, 768, 3072, 12)
    from clapart_core.encoders.beats import BEATs, BEATsConfig

    with torch.device("meta"):
        assert sum(p.numel() for p in BEATs(BEATsConfig(**beats)).parameters()) == 90_311_792
    clap = params["clap"]["random"]
    assert clap["audio"]["depths"] == [2, 2, 6, 2] and clap["audio"]["hidden_size"] == 768 and clap["audio"]["enable_fusion"] is True
    assert params["rvq"]["max_layers"] == 16 and params["rvq"]["codebook_size"] == 1024
    model = params["model"]
    shape = (model["d_model"], model["encoder_layers"], model["decoder_layers"], model["attention_heads"], model["ffn_dim"])
    assert model["pretrained"] is None and shape == (768, 6, 6, 12, 3072) and model["vocab_size"] == 50265
    bart = small_bart_config(model["vocab_size"], *shape)
    with torch.device("meta"):
        captioner = ClapArtForCaptioning(ClapArtConfig(bart=bart, num_codebooks=16, codebook_size=1024))
    assert 139e6 < sum(p.numel() for p in captioner.bart.parameters()) < 140e6  # facebook/bart-base: 139.4 M
    assert params["train"]["batch_size"] == 16 and params["encoder"]["type"] == "beats_rvq"
    clotho = phase_params(params, "clotho")
    assert (clotho["data"]["source"], clotho["train"]["batch_size"], clotho["train"]["lr"]) == ("clotho", 64, 2e-5)

    # from a project root holding the generated corpora, the profile's relative paths resolve
    monkeypatch.chdir(tiny_root.parents[1])
    preflight(params)
    assert len(load_caption_tokenizer(model["tokenizer"])) == 2000  # the tiny root's; the real one has vocab_size ids
    for data in (params["data"], clotho["data"]):
        table = build_manifest(data["source"], data["root"], strict=True, **data[data["source"]])
        assert table.num_rows == 4 if data["source"] == "audiocaps" else 3


def test_micro_batches_add_up_to_the_batch() -> None:
    """The fix for the Clotho batch's memory: slices of a batch give the batch's losses and gradients."""
    from contextlib import nullcontext

    import numpy as np

    from clapart_core.captioner.training import CaptionExample, backward_batch, build_batch

    torch.manual_seed(0)
    config = ClapArtConfig(bart=small_bart_config(60, 32, 1, 1, 2, 64, dropout=0.0, max_frames=40), num_codebooks=3, codebook_size=8, max_frames=40)
    model = ClapArtForCaptioning(config).train()
    rng = np.random.default_rng(0)
    lengths = (50, 7, 30, 12, 25)  # one over max_frames: cropped
    examples = [CaptionExample(f"c{i}", rng.integers(0, 8, (n, 3)), rng.standard_normal(512).astype(np.float32), ("x",)) for i, n in enumerate(lengths)]
    captions = [list(rng.integers(3, 60, n)) for n in (5, 9, 3, 7, 4)]
    batch = build_batch(examples, max_frames=40, use_clap=True, crop_generator=torch.Generator().manual_seed(1), caption_ids=captions)
    mcm_mask = model.mask_codes(batch.codes, batch.frame_mask, torch.Generator().manual_seed(2))
    results = []
    for micro in (5, 2):
        model.zero_grad(set_to_none=True)
        losses = backward_batch(model, batch, mcm_mask, micro, torch.device("cpu"), nullcontext)
        results.append((losses, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (whole, whole_grads), (sliced, sliced_grads) = results
    for name in ("loss", "caption_loss", "mcm_loss"):
        assert float(getattr(sliced, name)) == pytest.approx(float(getattr(whole, name)), rel=1e-5)
    assert len(whole_grads) == len(sliced_grads)
    for a, b in zip(whole_grads, sliced_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_kmeans_sample_under_faiss_floor_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    """The rehearsal's reduced run fitted 1024 centroids on 1,984 frames: FAISS's own warning did
    not say what to change; the fit now does (and metrics/rvq.json records points per centroid)."""
    import logging

    import numpy as np

    from clapart_core.tokens.rvq import KMeansConfig, fit_residual_codebooks

    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="clapart_core.tokens.rvq"):
        fit_residual_codebooks(x, 1, 16, KMeansConfig(niter=1))
    assert "300 sample frames for 16 centroids per layer is 18.8 per centroid" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clapart_core.tokens.rvq"):
        fit_residual_codebooks(x, 1, 4, KMeansConfig(niter=1))  # 75 per centroid: fine
    assert "per centroid" not in caplog.text
