"""Caption tokenizer, training loop (schedule, determinism, logging, saving) and generation."""

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clapart_core.captioner.data import CaptionExample, build_batch
from clapart_core.captioner.generate import caption_examples
from clapart_core.captioner.model_dir import load_captioner
from clapart_core.captioner.text import load_caption_tokenizer, normalize_caption, train_caption_tokenizer
from clapart_core.captioner.training import inverse_sqrt_factor, train_captioner

pytestmark = pytest.mark.usefixtures("one_thread")


WORDS = ["dog barks", "rain falls", "car passes", "bird sings", "man speaks", "water flows", "door slams", "bell rings"]


def toy_examples(n: int = 8, seed: int = 0) -> list[CaptionExample]:
    """Clips whose caption is a function of their codes (codebook 0 holds the class id)."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        codes = np.stack([np.full(10 + i, i), rng.integers(0, 8, 10 + i)], axis=1).astype(np.int16)
        clap = rng.standard_normal(6).astype(np.float32)
        examples.append(CaptionExample(f"clip{i}", codes, clap, (f"a {WORDS[i % 8]} loudly",)))
    return examples


MODEL_PARAMS = dict(
    pretrained=None,
    tokenizer=None,
    vocab_size=300,
    codebook_size=8,
    d_model=32,
    encoder_layers=1,
    decoder_layers=1,
    attention_heads=2,
    ffn_dim=64,
    dropout=0.0,
    use_clap=True,
    max_frames=64,
)
TRAIN_PARAMS = dict(
    epochs=2,
    batch_size=4,
    lr=3e-3,
    warmup_steps=5,
    weight_decay=0.01,
    label_smoothing=0.2,
    grad_clip=1.0,
    mcm_weight=0.7,
    mcm_prob=0.15,
    mcm_span=2,
    device="cpu",
    bf16=True,  # must be ignored on CPU
    # one thread: tiny models gain nothing from more, and OpenMP spin-waits on a busy
    # 2-core machine can slow a tiny step down 30-fold
    num_threads=1,
    log_every=2,
)


def test_tokenizer_round_trip_and_bart_special_ids(tmp_path):
    captions = [
        "A dog barks  loudly while a car passes.",
        "  Birds chirp in the distance\n",
        "Ünïcode café — sounds, “quoted”!",
        "Rain\tfalls on a tin roof",
    ]
    tokenizer = train_caption_tokenizer(captions * 10, vocab_size=320, out_dir=tmp_path / "tok")
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2, 3)
    assert tokenizer.mask_token_id == len(tokenizer) - 1 and len(tokenizer) <= 320
    reloaded = load_caption_tokenizer(tmp_path / "tok")
    for caption in captions + ["an unseen caption with new words: zebra xylophone 42"]:
        ids = tokenizer(caption)["input_ids"]
        assert ids[0] == 0 and ids[-1] == 2
        assert reloaded(caption)["input_ids"] == ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == normalize_caption(caption)
    assert normalize_caption("  a\t b \n") == "a b"
    with pytest.raises(FileNotFoundError):
        load_caption_tokenizer(tmp_path / "no-such-tokenizer")


def test_inverse_sqrt_schedule_with_and_without_warmup():
    assert inverse_sqrt_factor(50, 100) == pytest.approx(0.5)
    assert inverse_sqrt_factor(100, 100) == pytest.approx(1.0)
    assert inverse_sqrt_factor(400, 100) == pytest.approx(0.5)
    assert inverse_sqrt_factor(1, 0) == pytest.approx(1.0)
    assert inverse_sqrt_factor(4, 0) == pytest.approx(0.5)


def test_build_batch_pads_crops_and_masks_labels():
    examples = toy_examples(3)
    batch = build_batch(examples, max_frames=11, use_clap=True, crop_generator=None, caption_ids=[[0, 5, 2], [0, 2], [0, 7, 8, 2]])
    assert batch.codes.shape == (3, 11, 2)
    assert batch.frame_mask.sum(1).tolist() == [10, 11, 11]
    assert torch.equal(batch.codes[2, :, 1], torch.as_tensor(examples[2].codes[:11, 1], dtype=torch.long))
    assert batch.labels.tolist()[1] == [0, 2, -100, -100]
    no_clap = CaptionExample("x", examples[0].codes, None, ("a",))
    with pytest.raises(ValueError, match="CLAP"):
        build_batch([no_clap], max_frames=11, use_clap=True, crop_generator=None)


def test_overfits_code_determined_captions_and_generates_them(tmp_path):
    examples = toy_examples(8)
    # no label smoothing here: it caps token probabilities at ~0.8, and an under-trained model
    # then lets beam search's early stop prefer a truncated caption (smoothing has its own test)
    params = dict(TRAIN_PARAMS, epochs=150, batch_size=8, lr=5e-3, warmup_steps=10, log_every=10, label_smoothing=0.0)
    summary = train_captioner(
        examples, [], model_params=MODEL_PARAMS, train_params=params, out_dir=tmp_path / "model", live_dir=None, seed=7
    )
    assert summary["steps"] == 150
    assert summary["final_caption_loss"] < summary["first_step_loss"] / 2
    model, tokenizer = load_captioner(tmp_path / "model")
    references = [ex.captions[0] for ex in examples]
    assert caption_examples(model, tokenizer, examples, num_beams=4, max_length=20, batch_size=3) == references
    assert caption_examples(model, tokenizer, examples, num_beams=1, max_length=20, batch_size=8) == references


def test_same_seed_same_run_and_dvclive_files(tmp_path):
    examples, val = toy_examples(6), toy_examples(2, seed=1)
    runs = []
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        summary = train_captioner(
            examples,
            val,
            model_params=MODEL_PARAMS,
            train_params=TRAIN_PARAMS,
            out_dir=tmp_path / name / "model",
            live_dir=tmp_path / name / "live",
            seed=seed,
        )
        runs.append((summary, load_file(tmp_path / name / "model" / "model.safetensors")))
    (sa, wa), (sb, wb), (sc, wc) = runs
    assert sa["first_step_loss"] == sb["first_step_loss"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert sa["first_step_loss"] != sc["first_step_loss"]
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert sa["steps"] == 2 * 2 and len(sa["val_losses"]) == 2

    live = tmp_path / "a" / "live"
    for metric in ("loss", "caption_loss", "mcm_loss", "lr"):
        with open(live / "plots" / "metrics" / "train" / f"{metric}.tsv") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        assert [int(r["step"]) for r in rows] == [2, 4], metric
        assert all(np.isfinite(float(r[metric])) for r in rows)
    with open(live / "plots" / "metrics" / "val" / "loss.tsv") as f:
        assert len(list(csv.DictReader(f, delimiter="\t"))) == 2
    metrics = json.loads((live / "metrics.json").read_text())
    assert "loss" in metrics["train"] and "loss" in metrics["val"]

    model_dir = tmp_path / "a" / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json", "training_summary.json"} <= {p.name for p in model_dir.iterdir()}
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".model")], "temp dirs must be renamed away"


def test_rerun_replaces_model_dir_and_without_clap_works(tmp_path):
    examples = toy_examples(4)
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    params = dict(MODEL_PARAMS, use_clap=False)
    train_captioner(examples, [], model_params=params, train_params=dict(TRAIN_PARAMS, epochs=1), out_dir=out, live_dir=None, seed=0)
    assert not (out / "stale.txt").exists()
    model, tokenizer = load_captioner(out)
    assert model.clap_projection is None
    no_clap = [CaptionExample(ex.clip_id, ex.codes, None, ex.captions) for ex in examples]
    assert len(caption_examples(model, tokenizer, no_clap, max_length=8)) == 4


def test_caption_examples_returns_input_order_and_load_errors(tmp_path):
    examples = toy_examples(5)[::-1]  # longest first, so length-sorting reorders them
    train_captioner(
        examples, [], model_params=MODEL_PARAMS, train_params=dict(TRAIN_PARAMS, epochs=1), out_dir=tmp_path / "m", live_dir=None, seed=0
    )
    model, tokenizer = load_captioner(tmp_path / "m")
    batched = caption_examples(model, tokenizer, examples, num_beams=2, max_length=8, batch_size=2)
    one_by_one = [caption_examples(model, tokenizer, [ex], num_beams=2, max_length=8)[0] for ex in examples]
    assert batched == one_by_one
    with pytest.raises(FileNotFoundError, match="not a trained captioner"):
        load_captioner(tmp_path / "nothing-here")
