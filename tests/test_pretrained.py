"""Pretrained models by local directory take the same code path as a hub id; missing ones fail in one sentence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clapart_core.captioner.data import CaptionExample
from clapart_core.captioner.model_dir import load_captioner
from clapart_core.captioner.text import train_caption_tokenizer
from clapart_core.captioner.training import train_captioner
from clapart_core.encoders.clap import ModelNotFoundError, load_clap, random_clap


def test_clap_from_local_dir_matches_in_memory_model(tmp_path):
    enc = random_clap(seed=4)
    enc.model.save_pretrained(tmp_path / "clap")
    enc.feature_extractor.save_pretrained(tmp_path / "clap")
    loaded = load_clap(str(tmp_path / "clap"))
    assert loaded.pretrained and loaded.name == str(tmp_path / "clap")
    wave = [np.sin(np.arange(48000 * 2) * 0.05).astype(np.float32) * 0.3]
    np.testing.assert_allclose(loaded.embed(wave, ["a"]), enc.embed(wave, ["a"]), atol=1e-6)


def test_missing_clap_is_one_sentence(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE at import time, so set the constant it consults
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError) as err:
        load_clap("laion/clap-htsat-fused")
    msg = str(err.value)
    assert "laion/clap-htsat-fused" in msg and "hf download" in msg and "\n" not in msg


def test_training_from_a_local_bart_dir(tmp_path):
    """A tiny BART + its tokenizer saved like facebook/bart-base, trained through model.pretrained."""
    from transformers import BartConfig, BartForConditionalGeneration

    captions = ["a dog barks", "a bell rings twice", "rain falls", "a dog barks loudly"]
    tok = train_caption_tokenizer(captions * 10, vocab_size=300)
    cfg = BartConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                     encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                     decoder_start_token_id=2, forced_eos_token_id=2)
    torch.manual_seed(0)
    bart = BartForConditionalGeneration(cfg)
    bart.save_pretrained(tmp_path / "bart")
    tok.save_pretrained(tmp_path / "bart")
    rng = np.random.default_rng(0)
    examples = [CaptionExample(f"c{i}", rng.integers(0, 8, (12, 2)), None, (c,)) for i, c in enumerate(captions)]
    model_params = {"pretrained": str(tmp_path / "bart"), "tokenizer": None, "vocab_size": 300, "codebook_size": 8, "d_model": 32, "encoder_layers": 1,
                    "decoder_layers": 1, "attention_heads": 2, "ffn_dim": 64, "dropout": 0.0, "use_clap": False, "max_frames": 100}
    train_params = {"epochs": 1, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "weight_decay": 0.01, "label_smoothing": 0.2, "grad_clip": 1.0,
                    "mcm_weight": 0.7, "mcm_prob": 0.15, "mcm_span": 3, "device": "cpu", "bf16": False, "num_threads": 1}
    summary = train_captioner(examples, examples, model_params=model_params, train_params=train_params, out_dir=tmp_path / "model", live_dir=None, seed=0)
    assert summary["pretrained"] is True
    model, tokenizer = load_captioner(tmp_path / "model")
    assert model.bart.config.d_model == 32 and model.bart.config.vocab_size == len(tok)
    assert tokenizer.get_vocab() == tok.get_vocab()  # the pretrained tokenizer travelled with the model


def test_missing_bart_is_one_sentence(tmp_path):
    from clapart_core.captioner.model import ClapArtForCaptioning

    with pytest.raises(FileNotFoundError) as err:
        ClapArtForCaptioning.from_bart(str(tmp_path / "no-bart"), num_codebooks=2, codebook_size=8)
    assert "no-bart" in str(err.value) and "\n" not in str(err.value)
