"""Caption tokenizer, training loop (schedule, determinism, logging, saving) and generation."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import clapart_core.captioner.data as captioner_data
from clapart_core.captioner.data import CaptionExample, build_batch
from clapart_core.captioner.generate import caption_examples
from clapart_core.captioner.model import crop_frames
from clapart_core.captioner.model_dir import load_captioner
from clapart_core.captioner.text import load_caption_tokenizer, normalize_caption, train_caption_tokenizer
from clapart_core.captioner.train_state import CHECKPOINT_NAME, load_checkpoint
from clapart_core.captioner.training import (
    CropGridError,
    _optimizer,
    build_captioner,
    make_scheduler,
    train_captioner,
    weight_decay_groups,
)
from clapart_core.captioner.validation import ValScorer
from clapart_core.encoders.registry import token_metadata, token_type
from clapart_core.pipeline.params import phase_params

ROOT = Path(__file__).resolve().parents[1]

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


def _lr_factors(warmup_steps: int, timescale: int | None, steps: int) -> dict[int, float]:
    """The lr factor each optimiser step ran with, as the training loop reads it (``lr_used``).

    Step k (1-based) is the k-th ``optimizer.step()``; LambdaLR evaluates the schedule at the
    number of steps already taken, so step k runs with ``f(k - 1)``.
    """
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=2e-5)
    scheduler = make_scheduler(optimizer, warmup_steps, timescale)
    factors = {}
    for k in range(1, steps + 1):
        factors[k] = optimizer.param_groups[0]["lr"] / 2e-5
        optimizer.step()
        scheduler.step()
    return factors


def test_clotho_finetune_schedule_is_enclaps():
    """paper-clotho's fine-tune (EnCLAP's cfg/clotho_finetune: warm-up 0, time_scale 1000): the lr factor
    at optimiser steps 1 / 1000 / 4500 is 1.0 / 0.707 / 0.426. The hand-written schedule this replaced
    gave 1/sqrt(k) without warm-up: 1.0 / 0.032 / 0.015, about 20x less learning over the fine-tune."""
    clotho = phase_params(yaml.safe_load((ROOT / "profiles/paper-clotho.yaml").read_text()), "clotho")["train"]
    factors = _lr_factors(clotho["warmup_steps"], clotho["timescale"], 4500)
    assert factors[1] == pytest.approx(1.0, abs=1e-3)
    assert factors[1000] == pytest.approx(0.707, abs=1e-3)
    assert factors[4500] == pytest.approx(0.426, abs=1e-3)


def test_audiocaps_schedule_warms_up_from_zero_then_decays():
    """paper-audiocaps (EnCLAP's cfg/audiocaps: warm-up 2000, no time_scale = transformers' default, the
    warm-up): step 1 runs at lr 0 (f(0) = 0/2000, as in EnCLAP), step 2001 at the peak, step 8001 at half."""
    train = yaml.safe_load((ROOT / "profiles/paper-audiocaps.yaml").read_text())["train"]
    assert train["timescale"] is None
    factors = _lr_factors(train["warmup_steps"], train["timescale"], 8001)
    assert factors[1] == 0.0 and factors[1001] == pytest.approx(0.5)
    assert factors[2001] == pytest.approx(1.0) and factors[8001] == pytest.approx(0.5)


DEMO = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_weight_decay_groups_follow_enclaps_name_rule():
    """On the real parameter names: no decay exactly for names containing bias, LayerNorm.weight or
    layer_norm.weight; BART's layernorm_embedding.weight (1-D) IS decayed, as in EnCLAP."""
    model = build_captioner({**DEMO["model"], "codebook_size": 16}, DEMO["train"], vocab_size=100, num_codebooks=2, clap_dim=8)
    names = dict(model.named_parameters())
    decay, no_decay = weight_decay_groups(model)
    assert sorted(decay + no_decay) == sorted(names) and not set(decay) & set(no_decay)
    rule = ("bias", "LayerNorm.weight", "layer_norm.weight")
    assert all(any(part in n for part in rule) for n in no_decay) and not any(any(part in n for part in rule) for n in decay)
    for side in ("encoder", "decoder"):
        assert f"bart.model.{side}.layernorm_embedding.weight" in decay
        assert f"bart.model.{side}.layernorm_embedding.bias" in no_decay
        assert f"bart.model.{side}.layers.0.self_attn_layer_norm.weight" in no_decay
        assert f"bart.model.{side}.layers.0.final_layer_norm.weight" in no_decay
    assert "code_embeddings.0.weight" in decay and "clap_projection.bias" in no_decay
    # the one-dimensional parameters that are decayed: exactly the two embedding LayerNorm scales
    assert sorted(n for n in decay if names[n].ndim < 2) == ["bart.model.decoder.layernorm_embedding.weight", "bart.model.encoder.layernorm_embedding.weight"]
    optimizer = _optimizer(model, 1e-3, 0.01)
    groups = [({id(p) for p in g["params"]}, g["weight_decay"]) for g in optimizer.param_groups]
    assert groups == [({id(names[n]) for n in decay}, 0.01), ({id(names[n]) for n in no_decay}, 0.0)]


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


# ---------------------------------------------------------------- crops on the BEATs time-frequency grid


def test_beats_token_metadata_records_the_frequency_grid_and_max_frames_fits_it():
    """freq_patches comes from the registry into every token file's metadata; params.yaml's and every
    profile's max_frames are a multiple of it (1016 for BART's 1024 positions)."""
    meta = token_metadata(token_type("beats_rvq"), 16, 1024, {"name": "beats"})
    assert meta["freq_patches"] == token_type("beats_rvq").freq_patches == 8
    assert token_metadata(token_type("beats_tokenizer"), 1, 1024, {})["freq_patches"] == 8
    assert token_metadata(token_type("encodec"), 16, 1024, {})["freq_patches"] == 1
    for path in [ROOT / "params.yaml", *sorted((ROOT / "profiles").glob("*.yaml"))]:
        assert yaml.safe_load(path.read_text())["model"]["max_frames"] % meta["freq_patches"] == 0, path.name
    assert DEMO["model"]["max_frames"] == 1016


def _frame_indexed_clips(n: int, frames: int) -> list[CaptionExample]:
    """Clips whose codebook 0 holds the frame index, so a crop's first code is its start."""
    rng = np.random.default_rng(0)
    return [
        CaptionExample(
            f"clip{i}", np.stack([np.arange(frames), rng.integers(0, 8, frames)], axis=1).astype(np.int16), None, (f"a {WORDS[i]} loudly",)
        )
        for i in range(n)
    ]


def test_every_training_crop_of_beats_tokens_starts_on_the_grid(tmp_path, monkeypatch):
    """The training loop itself: 30 s BEATs clips (1,496 codes = 187 steps x 8) cropped to params.yaml's
    max_frames; every crop starts at a multiple of the tokens' freq_patches (8)."""
    freq = token_metadata(token_type("beats_rvq"), 2, 1500, {})["freq_patches"]
    max_frames = DEMO["model"]["max_frames"]
    starts = []

    def spy(codes, max_frames, generator, step=1):
        out = crop_frames(codes, max_frames, generator, step)
        if generator is not None and len(codes) > max_frames:
            starts.append(int(out[0, 0]))
            assert len(out) == max_frames
        return out

    monkeypatch.setattr(captioner_data, "crop_frames", spy)
    clips = _frame_indexed_clips(4, 187 * freq)
    params = dict(MODEL_PARAMS, use_clap=False, codebook_size=1500, max_frames=max_frames, freq_patches=freq)
    train_captioner(clips, [], model_params=params, train_params=dict(TRAIN_PARAMS, epochs=3, batch_size=2), out_dir=tmp_path / "m", live_dir=None, seed=3)
    assert len(starts) == 12 and len(set(starts)) > 1
    assert all(start % freq == 0 for start in starts), starts


def test_grid_crops_reach_every_aligned_start_and_encodec_keeps_any_start():
    codes = torch.arange(1496)[:, None]
    g = torch.Generator().manual_seed(0)
    aligned = {int(crop_frames(codes, 1016, g, 8)[0, 0]) for _ in range(3000)}
    assert aligned == set(range(0, 1496 - 1016 + 1, 8))  # all 61 starts on the grid, nothing else
    # step 1 (EnCodec, EnCLAP's crop): the very draw of an any-start crop, generator use included
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(50):
        want = int(torch.randint(0, 1496 - 1016 + 1, (1,), generator=b).item())
        assert int(crop_frames(codes, 1016, a, 1)[0, 0]) == want
    # evaluation takes the first max_frames, whatever the grid
    assert torch.equal(crop_frames(codes, 1016, None, 8), codes[:1016])
    batch = build_batch(_frame_indexed_clips(2, 1496), max_frames=1016, use_clap=False, crop_generator=None, crop_step=8)
    assert batch.codes[:, 0, 0].tolist() == [0, 0] and batch.codes.shape[1] == 1016


def test_a_max_frames_off_the_grid_is_refused_before_training(tmp_path):
    params = dict(MODEL_PARAMS, use_clap=False, max_frames=1020, freq_patches=8)
    with pytest.raises(CropGridError, match=r"^model.max_frames=1020 is not a multiple of 8, .*use 1016$"):
        train_captioner(toy_examples(2), [], model_params=params, train_params=TRAIN_PARAMS, out_dir=tmp_path / "m", live_dir=None, seed=0)
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------- validation scores and epoch selection


def scripted(values: list[float], metric: str = "cider_d", note: str | None = None, seen: list | None = None) -> ValScorer:
    """A scorer returning ``values`` in turn (one per epoch); what it was asked to score goes to ``seen``."""
    calls = iter(values)

    def score(predictions, references):
        if seen is not None:
            seen.append((list(predictions), [list(r) for r in references]))
        return {"cider_d": next(calls)}

    return ValScorer(score, metric, note)


def test_validation_decoding_does_not_move_the_training_trajectory(tmp_path):
    """A run that beam-searches and scores the validation split every epoch trains bitwise as one that
    does not (beam search must not draw from the RNG dropout uses); its dvclive has val/cider_d per epoch."""
    examples, val = toy_examples(6), toy_examples(3, seed=1)
    params = dict(MODEL_PARAMS, dropout=0.1)
    plain = train_captioner(examples, val, model_params=params, train_params=dict(TRAIN_PARAMS, epochs=3), out_dir=tmp_path / "a/model",
                            live_dir=tmp_path / "a/live", seed=4, checkpoint_dir=tmp_path / "a/ckpt")
    seen: list = []
    scorer = scripted([0.3, 0.9, 0.5], seen=seen)
    scored = train_captioner(examples, val, model_params=params, train_params=dict(TRAIN_PARAMS, epochs=3, select_by="cider_d"),
                             out_dir=tmp_path / "b/model", live_dir=tmp_path / "b/live", seed=4, checkpoint_dir=tmp_path / "b/ckpt",
                             val_scorer=scorer, generate_params={"num_beams": 2, "max_length": 8, "no_repeat_ngram_size": 3, "batch_size": 2})
    last_a, last_b = load_checkpoint(tmp_path / "a/ckpt" / CHECKPOINT_NAME), load_checkpoint(tmp_path / "b/ckpt" / CHECKPOINT_NAME)
    assert all(torch.equal(last_a["model"][k], last_b["model"][k]) for k in last_a["model"])
    assert torch.equal(last_a["rng"]["torch"], last_b["rng"]["torch"])
    assert plain["val_losses"] == scored["val_losses"] and plain["final_loss"] == scored["final_loss"]
    # the scorer saw 3 beam-searched validation splits, references as given
    assert len(seen) == 3 and all(len(preds) == 3 and refs == [list(ex.captions) for ex in val] for preds, refs in seen)
    with open(tmp_path / "b/live/plots/metrics/val/cider_d.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [float(r["cider_d"]) for r in rows] == [0.3, 0.9, 0.5] and [int(r["step"]) for r in rows] == [2, 4, 6]
    assert (plain["best_epoch"], scored["best_epoch"]) == (int(np.argmin(plain["val_losses"])) + 1, 2)
    assert scored["selected_by"] == "cider_d" and scored["best_score"] == 0.9


def test_selected_epoch_is_in_the_model_dir_and_the_best_ones_are_kept(tmp_path):
    """data/model holds the best validation epoch by the metric; keep_best=2 keeps the 2 best (loadable
    folders under epochs/); the snapshots of the other epochs are gone."""
    examples, val = toy_examples(6), toy_examples(3, seed=1)
    out, ckpt = tmp_path / "model", tmp_path / "ckpt"
    summary = train_captioner(examples, val, model_params=MODEL_PARAMS, train_params=dict(TRAIN_PARAMS, epochs=4, select_by="cider_d", keep_best=2),
                              out_dir=out, live_dir=None, seed=4, checkpoint_dir=ckpt, val_scorer=scripted([0.1, 0.5, 0.3, 0.2]),
                              generate_params={"num_beams": 1, "max_length": 6, "no_repeat_ngram_size": 3, "batch_size": 3})
    assert (summary["best_epoch"], summary["kept_epochs"], summary["best_score"]) == (2, [2, 3], 0.5)
    assert [r["epoch"] for r in summary["val_history"]] == [1, 2, 3, 4] and summary["val_history"][1]["cider_d"] == 0.5
    assert sorted(p.name for p in (out / "epochs").iterdir()) == ["epoch_2", "epoch_3"]
    assert sorted(p.name for p in (ckpt / "epochs").iterdir()) == ["epoch_2", "epoch_3"]
    top = (out / "model.safetensors").read_bytes()
    assert top == (out / "epochs/epoch_2/model.safetensors").read_bytes() != (out / "epochs/epoch_3/model.safetensors").read_bytes()
    # the last epoch's weights (in last.pt) are not the selected ones
    selected = load_file(out / "model.safetensors")
    last = load_checkpoint(ckpt / CHECKPOINT_NAME)["model"]
    assert any(not torch.equal(selected[k], last[k]) for k in selected)
    model, tokenizer = load_captioner(out / "epochs/epoch_3")
    assert len(caption_examples(model, tokenizer, val, num_beams=1, max_length=6)) == 3
    assert len(summary["epoch_seconds"]) == 4 and all(s["val_decode"] > 0 for s in summary["epoch_seconds"])


def test_select_by_settings_that_cannot_work_are_refused(tmp_path):
    run = dict(model_params=MODEL_PARAMS, out_dir=tmp_path / "m", live_dir=None, seed=0)
    with pytest.raises(ValueError, match="train.select_by=cider_d needs a validation scorer"):
        train_captioner(toy_examples(4), toy_examples(2, 1), train_params=dict(TRAIN_PARAMS, select_by="cider_d"), **run)
    with pytest.raises(ValueError, match="train.select_by='bleu' is not one of spider, cider_d, loss"):
        train_captioner(toy_examples(4), toy_examples(2, 1), train_params=dict(TRAIN_PARAMS, select_by="bleu"), **run)
    with pytest.raises(ValueError, match="needs at least 2 validation clips"):
        train_captioner(toy_examples(4), toy_examples(1, 1), train_params=dict(TRAIN_PARAMS, select_by="cider_d"), val_scorer=scripted([1.0]), **run)


def test_spider_falls_back_to_cider_d_and_says_so(tmp_path):
    note = "SPIDEr cannot be computed here, so epochs are selected by CIDEr-D: no SPICE"
    summary = train_captioner(toy_examples(4), toy_examples(2, 1), model_params=MODEL_PARAMS, train_params=dict(TRAIN_PARAMS, select_by="spider"),
                              out_dir=tmp_path / "m", live_dir=None, seed=0, val_scorer=scripted([0.2, 0.1], note=note),
                              generate_params={"num_beams": 1, "max_length": 6, "no_repeat_ngram_size": 3, "batch_size": 2})
    assert (summary["select_by"], summary["selected_by"], summary["select_note"], summary["best_epoch"]) == ("spider", "cider_d", note, 1)
    saved = json.loads((tmp_path / "m/training_summary.json").read_text())
    assert saved["selected_by"] == "cider_d" and saved["kept_epochs"] == []
