"""A tiny trained model directory, built in-process in a few seconds, for the `clapart caption` tests.

The same layout the train stage writes (``model_dir.save_captioner`` via ``train_captioner``, then
``model_dir.write_frontend``): a seeded random tiny BEATs + RVQ codebooks drawn from its features,
a tiny random CLAP, and a BART captioner trained on six synthetic tones whose caption names the
pitch. Codes and CLAP embeddings are made from the audio through the very front end that
``frontend.json`` records, so ``clapart caption`` rebuilds exactly what the model was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from conftest import TINY_BEATS

from clapart_core.captioner.data import CaptionExample
from clapart_core.captioner.model_dir import write_frontend
from clapart_core.captioner.training import train_captioner
from clapart_core.encoders.clap import clap_from_spec
from clapart_core.encoders.registry import encoder_from_spec, token_metadata, token_type
from clapart_core.pipeline.storage import RaggedWriter, model_fingerprint
from clapart_core.tokens.rvq import ResidualVQ, save_codebooks

BEATS_SPEC = {"checkpoint": None, "random": TINY_BEATS, "seed": 3}
CLAP_SPEC = {"checkpoint": None, "random": {"projection_dim": 16}, "seed": 4}
PITCHES = {220.0: "a low hum", 440.0: "a middle beep", 880.0: "a high whistle", 1760.0: "a shrill squeal", 330.0: "a soft drone", 660.0: "a bright tone"}
MAX_FRAMES = 512  # codes the captioner reads: 64 BEATs time patches, 10.255 s
DECODE_MAX_SECONDS = 30.0  # what the decode stage would crop at (recorded in frontend.json)


def tone(freq: float, seconds: float, sr: int = 16_000, seed: int = 0) -> np.ndarray:
    """A sine at ``freq`` Hz with a little seeded noise, ``[S]`` float32 at ``sr``."""
    t = np.arange(int(seconds * sr)) / sr
    noise = 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return (0.4 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def _pcm(wave: np.ndarray) -> np.ndarray:
    return (np.round(wave * 32767.0) / 32767.0).astype(np.float32)


def build_model_dir(root: Path, beats_random: dict | None = None) -> Path:
    """Write ``root/model`` (and its inputs under ``root``); returns the model directory.
    ``beats_random``: other BEATs sizes (e.g. the demo's ``beats.random``) instead of the tiny ones."""
    torch.manual_seed(0)
    kind = token_type("beats_rvq")
    spec = BEATS_SPEC if beats_random is None else {**BEATS_SPEC, "random": beats_random}
    encoder = encoder_from_spec(kind.name, spec)
    clap = clap_from_spec(CLAP_SPEC)
    waves = {f: tone(f, 1.0, seed=i) for i, f in enumerate(PITCHES)}
    with torch.no_grad():
        feats = torch.cat([encoder.model.extract_features(torch.from_numpy(_pcm(w))[None])[0][0] for w in waves.values()])
    g = torch.Generator().manual_seed(0)
    first = feats[torch.randperm(len(feats), generator=g)[:8]]
    second = 0.1 * feats.std() * torch.randn(8, feats.shape[1], generator=g)
    codebooks = torch.stack([first, second]).numpy()
    rvq_file = root / "rvq.npz"
    save_codebooks(rvq_file, codebooks, layers=2, codebook_size=8)
    rvq = ResidualVQ(codebooks)

    examples = []
    for i, (freq, wave) in enumerate(waves.items()):
        codes = encoder.codes(_pcm(wave), rvq)
        from clapart_core.corpus.audio import resample

        emb = clap.embed([_pcm(resample(wave, 16_000, 48_000))], [f"tone{i}"])[0]
        examples.append(CaptionExample(f"tone{i}", codes, emb, (PITCHES[freq],)))
    model_params = dict(
        pretrained=None, tokenizer=None, vocab_size=300, codebook_size=8, d_model=32, encoder_layers=1, decoder_layers=1,
        attention_heads=2, ffn_dim=64, dropout=0.0, use_clap=True, max_frames=MAX_FRAMES,
    )
    train_params = dict(
        epochs=80, batch_size=6, lr=5e-3, warmup_steps=5, weight_decay=0.01, label_smoothing=0.0, grad_clip=1.0,
        mcm_weight=0.0, mcm_prob=0.15, mcm_span=2, device="cpu", bf16=False, num_threads=1,
    )
    out = root / "model"
    train_captioner(examples, [], model_params=model_params, train_params=train_params, out_dir=out, live_dir=None, seed=0)

    clap_file = root / "clap_train.h5"
    attrs = {"spec": json.dumps(CLAP_SPEC), "pretrained": False, "weights_sha256": model_fingerprint(clap.model)}
    with RaggedWriter(clap_file, (16,), np.float32, attrs=attrs) as w:
        for ex in examples:
            w.append(ex.clip_id, ex.clap[None])
    meta = token_metadata(kind, 2, 8, encoder.record(), codebooks=(str(rvq_file), {"layers": 2}))
    write_frontend(out, meta, rvq_file, clap_file, max_seconds=DECODE_MAX_SECONDS)
    return out


def write_tone(path: Path, freq: float, seconds: float, sr: int = 44_100, channels: int = 1, subtype: str = "PCM_16") -> Path:
    """A tone file at any rate / channel count, written in blocks (a 10-minute file never sits in memory)."""
    block = 10 * sr
    with sf.SoundFile(path, "w", samplerate=sr, channels=channels, subtype=subtype) as f:
        for start in range(0, int(seconds * sr), block):
            n = min(block, int(seconds * sr) - start)
            t = (start + np.arange(n)) / sr
            x = (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
            f.write(np.repeat(x[:, None], channels, axis=1) if channels > 1 else x)
    return path
