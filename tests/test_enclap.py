"""EnCLAP checkpoints in clapart: conformance with EnCLAP's own outputs, and `clapart import-enclap`.

The reference (tests/fixtures/enclap, see its README) is an EnCLAP checkpoint with seeded random
weights and the outputs EnCLAP's ``EnClapBartForConditionalGeneration`` computed from it:
4 codebooks of K = 50 codes, d_model 32, vocabulary 96, CLAP dim 12, clips of 10, 7 and 4 frames.
Tolerances are the README's: 1e-5 absolute for encoder states and logits on valid positions,
1e-5 relative for losses, beams exact.

EnCodec's codebook sizes are powers of two, so no EnCodec front end produces the fixture's K = 50
(``import-enclap`` refuses it, tested). The model-directory tests use the fixture widened to K = 64
(:func:`widened_checkpoint`): codes 0-49, the pad row and every other weight are the fixture's,
so on the fixture's inputs (codes < 50) it must still give EnCLAP's reference beams; a random
EnCodec with 64-entry codebooks then drives ``clapart caption`` end to end.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from clapart_core.captioner.enclap import clapart_config_from_enclap, read_enclap_state_dict
from clapart_core.captioner.enclap_import import import_enclap, inputs_from_enclap
from clapart_core.captioner.model import IGNORE_INDEX, ClapArtConfig, ClapArtForCaptioning
from clapart_core.cli import app
from clapart_core.encoders.encodec import RANDOM_ENCODEC_DEFAULTS
from clapart_core.pipeline.checkpoints import CheckpointError

load_enclap = ClapArtForCaptioning.from_enclap

FIXTURES = Path(__file__).parent / "fixtures" / "enclap"
CHECKPOINT = FIXTURES / "checkpoint"
ATOL = 1e-5  # states and logits (README: float32 noise between two correct implementations is ~2e-6)
RTOL = 1e-5  # losses
K, N, E, V = 50, 4, 12, 96
# a random EnCodec whose codebooks fit the widened checkpoint: 64 codes, 4 codebooks at 1.8 kbps
# (floor(1800 / (75 * log2 64)) = 4)
ENCODEC_SPEC = {"random": {"codebook_size": 64, "target_bandwidths": [1.8]}, "seed": 3}
CLAP_SPEC = {"random": {"projection_dim": E}, "seed": 5}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cases() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "cases.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def generation() -> dict:
    return json.loads((FIXTURES / "meta.json").read_text())["generation"]


@pytest.fixture(scope="module")
def model() -> ClapArtForCaptioning:
    return ClapArtForCaptioning.from_enclap(CHECKPOINT)


def _valid_rows(cases: dict[str, np.ndarray]) -> np.ndarray:
    return cases["attention_mask"].astype(bool)  # [B, L]


def _valid_labels(cases: dict[str, np.ndarray]) -> np.ndarray:
    return cases["labels"] != IGNORE_INDEX  # [B, Lc]


def _beams(model: ClapArtForCaptioning, cases: dict[str, np.ndarray], generation: dict) -> list[list[int]]:
    """Beam search one clip at a time (as EnCLAP's evaluate.py) with meta.json's settings."""
    inputs = inputs_from_enclap(cases["input_ids"], cases["attention_mask"], cases["clap_embedding"], model.config)
    assert generation["forced_bos_token_id"] == model.config.bart.bos_token_id  # what generate_ids forces
    assert generation["forced_eos_token_id"] == model.config.bart.eos_token_id
    assert generation["decoder_start_token_id"] == model.config.bart.decoder_start_token_id
    out = []
    for b, frames in enumerate(cases["codes_lengths"].tolist()):
        ids = model.generate_ids(
            inputs.codes[b : b + 1, :frames],
            None,
            inputs.clap[b : b + 1],
            num_beams=generation["num_beams"],
            no_repeat_ngram_size=generation["no_repeat_ngram_size"],
            max_length=generation["max_length"],
            early_stopping=generation["early_stopping"],
        )
        out.append(ids[0].tolist())
    return out


def _reference_beams(cases: dict[str, np.ndarray], pad_id: int = 1) -> list[list[int]]:
    """``beam_ids`` without the padding (1) generate.py appended to shorter beams."""
    beams = []
    for row in cases["beam_ids"].tolist():
        while row and row[-1] == pad_id:
            row = row[:-1]
        beams.append(row)
    return beams


# ---------------------------------------------------------------------------------- conversion
def test_config_maps_enclap_fields(model: ClapArtForCaptioning) -> None:
    config = model.config
    assert (config.num_codebooks, config.codebook_size, config.clap_dim) == (N, K, E)
    assert (config.mcm_weight, config.label_smoothing) == (0.7, 0.2)
    assert config.use_clap and not config.normalize_clap
    assert config.max_frames == 40 - 3  # EnCLAP crops to max_position_embeddings - 3 frames
    bart = config.bart
    assert (bart.vocab_size, bart.d_model, bart.encoder_layers, bart.decoder_layers) == (V, 32, 2, 2)
    assert (bart.pad_token_id, bart.bos_token_id, bart.eos_token_id, bart.decoder_start_token_id) == (1, 0, 2, 2)
    assert not model.training


def test_config_keys_of_bart_base_convert_and_survive_saving(tmp_path: Path) -> None:
    """EnCLAP's published configs start from facebook/bart-base's, with its legacy and generation keys."""
    enclap = json.loads((CHECKPOINT / "config.json").read_text())
    enclap |= {
        "_name_or_path": "facebook/bart-base", "add_bias_logits": False, "add_final_layer_norm": False,
        "classif_dropout": 0.1, "early_stopping": True, "no_repeat_ngram_size": 3, "normalize_before": False,
        "normalize_embedding": True, "num_beams": 4, "task_specific_params": {"summarization": {"max_length": 128}},
    }
    config = ClapArtConfig(**clapart_config_from_enclap(enclap))
    assert (config.bart.d_model, config.bart.vocab_size, config.codebook_size) == (32, V, K)
    ClapArtForCaptioning(config).save_pretrained(str(tmp_path))
    reloaded = ClapArtForCaptioning.from_pretrained(str(tmp_path)).config
    assert reloaded.normalize_clap is False and reloaded.max_frames == 37


def test_code_tables_keep_codes_and_pad_and_copy_pad_into_mask_row(model: ClapArtForCaptioning) -> None:
    state = read_enclap_state_dict(CHECKPOINT)
    for i in range(N):
        enclap = state[f"model.encoder.embed_encodec.{i}.weight"]  # [ceil(51 / 64) * 64, D]
        assert enclap.shape[0] == math.ceil((K + 1) / 64) * 64
        ours = model.code_embeddings[i].weight.detach()  # [K + 2, D]
        assert ours.shape[0] == K + 2
        assert torch.equal(ours[: K + 1], enclap[: K + 1])  # codes and pad row
        assert torch.equal(ours[model.config.mask_code_id], enclap[K])  # mask row := EnCLAP's pad row
        assert not ours[K].any()
    ours = model.state_dict()
    for enclap_name, name in [
        ("model.encoder.clap_projection.weight", "clap_projection.weight"),
        ("mcm_heads.3.bias", "mcm_heads.3.bias"),
        ("model.decoder.layers.1.fc2.weight", "bart.model.decoder.layers.1.fc2.weight"),
        ("final_logits_bias", "bart.final_logits_bias"),
        ("model.shared.weight", "bart.lm_head.weight"),
    ]:
        assert torch.equal(ours[name], state[enclap_name]), enclap_name


# ---------------------------------------------------------------------------------- conformance
def test_plain_forward_matches_enclap(model: ClapArtForCaptioning, cases: dict[str, np.ndarray]) -> None:
    inputs = inputs_from_enclap(
        cases["input_ids"], cases["attention_mask"], cases["clap_embedding"], model.config, encodec_mask=cases["encodec_mask"]
    )
    assert inputs.mcm_mask is None
    with torch.no_grad():
        out = model(inputs.codes, inputs.frame_mask, inputs.clap, labels=torch.as_tensor(cases["labels"]))
    hidden = out.encoder_last_hidden_state.numpy()
    assert hidden.shape == cases["encoder_last_hidden_state"].shape  # same length L = T + 3, row for row
    np.testing.assert_array_equal(out.encoder_attention_mask.numpy(), _valid_rows(cases))
    valid = _valid_rows(cases)
    np.testing.assert_allclose(hidden[valid], cases["encoder_last_hidden_state"][valid], rtol=0, atol=ATOL)
    labels = _valid_labels(cases)
    np.testing.assert_allclose(out.logits.numpy()[labels], cases["logits"][labels], rtol=0, atol=ATOL)
    np.testing.assert_allclose(float(out.caption_loss), cases["lm_loss"], rtol=RTOL)


def test_mcm_forward_matches_enclap(model: ClapArtForCaptioning, cases: dict[str, np.ndarray]) -> None:
    inputs = inputs_from_enclap(
        cases["masked_input_ids"],
        cases["attention_mask"],
        cases["clap_embedding"],
        model.config,
        encodec_mask=cases["encodec_mask"],
        mcm_labels=cases["mcm_labels"],
    )
    assert int(inputs.mcm_mask.sum()) == int((cases["mcm_labels"] != IGNORE_INDEX).sum()) > 0
    # the adapter restores the true codes; clapart's forward masks them again with the mask id
    plain = inputs_from_enclap(cases["input_ids"], cases["attention_mask"], cases["clap_embedding"], model.config)
    assert torch.equal(inputs.codes, plain.codes)
    with torch.no_grad():
        out = model(
            inputs.codes, inputs.frame_mask, inputs.clap, labels=torch.as_tensor(cases["labels"]), mcm_mask=inputs.mcm_mask
        )
    valid = _valid_rows(cases)
    np.testing.assert_allclose(
        out.encoder_last_hidden_state.numpy()[valid], cases["mcm_encoder_last_hidden_state"][valid], rtol=0, atol=ATOL
    )
    labels = _valid_labels(cases)
    np.testing.assert_allclose(out.logits.numpy()[labels], cases["mcm_logits"][labels], rtol=0, atol=ATOL)
    np.testing.assert_allclose(float(out.caption_loss), cases["mcm_lm_loss"], rtol=RTOL)
    np.testing.assert_allclose(float(model.config.mcm_weight * out.mcm_loss), cases["mcm_loss_scaled"], rtol=RTOL)
    np.testing.assert_allclose(float(out.loss), cases["mcm_total_loss"], rtol=RTOL)


def test_beam_search_matches_enclap_one_clip_at_a_time(
    model: ClapArtForCaptioning, cases: dict[str, np.ndarray], generation: dict
) -> None:
    assert _beams(model, cases, generation) == _reference_beams(cases)


def test_clap_embedding_is_projected_as_given(model: ClapArtForCaptioning, cases: dict[str, np.ndarray]) -> None:
    """EnCLAP does not normalise CLAP inside the model; neither does an imported clapart model."""
    inputs = inputs_from_enclap(cases["input_ids"], cases["attention_mask"], cases["clap_embedding"], model.config)
    seen = {}
    hook = model.bart.model.encoder.layernorm_embedding.register_forward_pre_hook(
        lambda module, args: seen.setdefault("x", args[0].detach().clone())
    )
    try:
        with torch.no_grad():
            model.encode(inputs.codes, inputs.frame_mask, 3.0 * inputs.clap)
    finally:
        hook.remove()
    with torch.no_grad():
        expected = model.clap_projection(3.0 * inputs.clap)
    torch.testing.assert_close(seen["x"][:, 0], expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------------- input adapter
def test_adapter_lays_enclap_rows_out_as_codes_and_frame_mask(cases: dict[str, np.ndarray], model: ClapArtForCaptioning) -> None:
    inputs = inputs_from_enclap(cases["input_ids"], cases["attention_mask"], cases["clap_embedding"], model.config)
    lengths = cases["codes_lengths"].tolist()
    assert list(inputs.codes.shape) == [3, max(lengths), N]
    assert inputs.frame_mask.sum(dim=1).tolist() == lengths
    for b, t in enumerate(lengths):
        np.testing.assert_array_equal(inputs.codes[b, :t].numpy(), cases["input_ids"][b, 2 : 2 + t])
    # a pad id inside a clip without an MCM label reads the mask row (EnCLAP: the pad row, same vector)
    masked = inputs_from_enclap(cases["masked_input_ids"], cases["attention_mask"], cases["clap_embedding"], model.config)
    is_pad = torch.as_tensor(cases["masked_input_ids"][:, 2 : 2 + max(lengths)] == K) & masked.frame_mask[:, :, None]
    assert bool(is_pad.any()) and bool((masked.codes[is_pad] == model.config.mask_code_id).all())


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda c: c["input_ids"].__setitem__((0, 1, 0), 5), "row 1 of every clip must hold <s>"),
        (lambda c: c["attention_mask"].__setitem__((1, 0), 0), "prefix"),
        (lambda c: c["mcm_labels"].__setitem__((0, 2, 0), 7), "not masked with the pad id"),
        (lambda c: c["mcm_labels"].__setitem__((0, 0, 0), 7), "only be set on the code rows"),
        (lambda c: c["encodec_mask"].__setitem__((0, 1), 1), "encodec_mask"),
    ],
)
def test_adapter_refuses_what_clapart_inputs_cannot_express(cases, model, corrupt, message) -> None:
    bad = {key: value.copy() for key, value in cases.items()}
    bad["input_ids"] = bad["masked_input_ids"]
    corrupt(bad)
    with pytest.raises(ValueError, match=message):
        inputs_from_enclap(
            bad["input_ids"],
            bad["attention_mask"],
            bad["clap_embedding"],
            model.config,
            encodec_mask=bad["encodec_mask"],
            mcm_labels=bad["mcm_labels"],
        )


# ---------------------------------------------------------------------------------- checkpoint formats
def _copy_checkpoint(tmp_path: Path, state: dict[str, torch.Tensor] | None = None, name: str = "enclap") -> Path:
    """A checkpoint directory with the fixture's config.json and ``state`` as pytorch_model.bin."""
    out = tmp_path / name
    out.mkdir()
    shutil.copy(CHECKPOINT / "config.json", out / "config.json")
    if state is not None:
        torch.save(state, out / "pytorch_model.bin")
    return out


def test_safetensors_and_sharded_checkpoints_load_the_same_weights(tmp_path: Path, model: ClapArtForCaptioning) -> None:
    state = read_enclap_state_dict(CHECKPOINT)
    # save_pretrained's safetensors keeps one of each tied group: drop the copies
    copies = ("lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")
    single = {k: v.clone() for k, v in state.items() if k not in copies}
    safe = _copy_checkpoint(tmp_path)
    save_file(single, str(safe / "model.safetensors"))
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(CHECKPOINT / "config.json", sharded / "config.json")
    keys = sorted(single)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: single[k] for k in part}, str(sharded / name))
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    expected = model.state_dict()
    for path in (safe, sharded):
        loaded = load_enclap(path).state_dict()
        assert loaded.keys() == expected.keys()
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), path


def test_missing_and_unexpected_keys_are_named_in_one_sentence(tmp_path: Path) -> None:
    state = read_enclap_state_dict(CHECKPOINT)
    del state["mcm_heads.2.bias"]
    state["model.encoder.embed_encodec.4.weight"] = torch.zeros(64, 32)  # a fifth codebook the config lacks
    state["model.encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_enclap(_copy_checkpoint(tmp_path, state))
    message = str(err.value)
    assert "\n" not in message and message.count(". ") == 0
    assert "missing mcm_heads.2.bias" in message
    assert "unexpected model.encoder.embed_encodec.4.weight, model.encoder.extra.weight" in message


def test_wrong_shapes_and_differing_tied_copies_are_refused(tmp_path: Path) -> None:
    state = read_enclap_state_dict(CHECKPOINT)
    state["model.encoder.embed_encodec.1.weight"] = state["model.encoder.embed_encodec.1.weight"][:K]  # no pad row
    state["mcm_heads.0.weight"] = torch.zeros(K + 1, 32)
    expected = r"wrongly shaped model\.encoder\.embed_encodec\.1\.weight \[50, 32\].*mcm_heads\.0\.weight \[51, 32\] \(expected \[50, 32\]\)"
    with pytest.raises(CheckpointError, match=expected):
        load_enclap(_copy_checkpoint(tmp_path, state))
    state = {k: v.clone() for k, v in read_enclap_state_dict(CHECKPOINT).items()}
    state["lm_head.weight"] += 1.0
    with pytest.raises(CheckpointError, match="lm_head.weight, which BART .* tie"):
        load_enclap(_copy_checkpoint(tmp_path, state, name="tied"))


def test_not_an_enclap_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_enclap(tmp_path)
    config = json.loads((CHECKPOINT / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in ("d_clap", "num_rvq")}))
    with pytest.raises(CheckpointError, match="lacks d_clap, num_rvq"):
        load_enclap(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="holds no weights"):
        load_enclap(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "encodec_pad_token_id": 0}))
    with pytest.raises(CheckpointError, match="encodec_pad_token_id=0"):
        load_enclap(tmp_path)


# ---------------------------------------------------------------------------------- import-enclap
def tiny_tokenizer(out: Path) -> Path:
    """A word-level caption tokenizer with BART's special ids that fits the fixture's 96 ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from clapart_core.captioner.text import check_special_token_ids

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, V - 1)}, "<mask>": V - 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>", mask_token="<mask>"
    )
    check_special_token_ids(tokenizer)
    tokenizer.save_pretrained(str(out))
    return out


def widened_checkpoint(out: Path, k_new: int = 64, seed: int = 0) -> Path:
    """The fixture checkpoint with K = ``k_new`` codes (safetensors, as newer save_pretrained writes).

    Codes 0-49, the pad row (now row ``k_new``) and every other weight are the fixture's; the new
    codes' rows and MCM-head outputs are seeded random.
    """
    g = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in read_enclap_state_dict(CHECKPOINT).items()}
    rows = math.ceil((k_new + 1) / 64) * 64
    for i in range(N):
        old = state[f"model.encoder.embed_encodec.{i}.weight"]
        new = torch.zeros(rows, old.shape[1])
        new[:K] = old[:K]
        new[K:k_new] = 0.2 * torch.randn(k_new - K, old.shape[1], generator=g)
        new[k_new] = old[K]  # pad row (zero)
        state[f"model.encoder.embed_encodec.{i}.weight"] = new
        weight, bias = state[f"mcm_heads.{i}.weight"], state[f"mcm_heads.{i}.bias"]
        state[f"mcm_heads.{i}.weight"] = torch.cat([weight, 0.2 * torch.randn(k_new - K, weight.shape[1], generator=g)])
        state[f"mcm_heads.{i}.bias"] = torch.cat([bias, 0.1 * torch.randn(k_new - K, generator=g)])
    for tied in ("lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"):
        del state[tied]
    out.mkdir(parents=True)
    config = json.loads((CHECKPOINT / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "encodec_vocab_size": k_new, "encodec_pad_token_id": k_new}))
    save_file(state, str(out / "model.safetensors"))
    return out


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`clapart import-enclap` of the widened checkpoint with a tiny tokenizer, random EnCodec and CLAP."""
    root = tmp_path_factory.mktemp("import")
    source = widened_checkpoint(root / "enclap64")
    tokenizer = tiny_tokenizer(root / "tokenizer")
    out = root / "model"
    args = ["import-enclap", str(source), str(out), "--tokenizer", str(tokenizer), "--encodec", json.dumps(ENCODEC_SPEC), "--clap", json.dumps(CLAP_SPEC)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    again = CliRunner().invoke(app, args)  # an existing directory is not overwritten silently
    assert again.exit_code == 2 and "pass --force" in again.output
    return {"source": source, "tokenizer": tokenizer, "out": out}


def test_import_writes_a_model_directory_with_an_encodec_front_end(imported: dict[str, Path]) -> None:
    from clapart_core.captioner.model_dir import read_frontend

    out = imported["out"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "frontend.json", "training_summary.json"} <= {p.name for p in out.iterdir()}
    front = read_frontend(out)
    assert front["encoder_type"] == "encodec" and front["num_codebooks"] == N
    random_config = {**RANDOM_ENCODEC_DEFAULTS, **ENCODEC_SPEC["random"]}  # random_encodec records the merged config
    assert front["encoder"]["spec"] == {"random": random_config, "seed": ENCODEC_SPEC["seed"], "bandwidth": 1.8}
    assert front["encoder"]["pretrained"] is False and front["clap"]["pretrained"] is False
    assert front["clap"]["spec"] == {"checkpoint": None, "seed": 5, "random": {"projection_dim": E}}
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["imported_from"] == str(imported["source"].resolve())
    assert summary["imported_format"] == "enclap" and summary["pretrained"] is True
    assert list(summary["imported_weights"]) == ["model.safetensors"]


def test_imported_directory_loads_like_a_trained_one_and_gives_enclaps_beams(
    imported: dict[str, Path], cases: dict[str, np.ndarray], generation: dict
) -> None:
    """The loader of `clapart caption` and the score stage, and the score stage's captioning."""
    from clapart_core.captioner.data import CaptionExample
    from clapart_core.captioner.generate import caption_examples
    from clapart_core.captioner.model_dir import load_captioner

    model, tokenizer = load_captioner(imported["out"])
    direct = ClapArtForCaptioning.from_enclap(imported["source"])
    assert model.config.normalize_clap is False and model.config.codebook_size == 64
    expected = direct.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    reference = _reference_beams(cases)
    assert _beams(model, cases, generation) == reference == _beams(direct, cases, generation)
    examples = [
        CaptionExample(f"clip{b}", cases["input_ids"][b, 2 : 2 + t], cases["clap_embedding"][b], ("",))
        for b, t in enumerate(cases["codes_lengths"].tolist())
    ]
    captions = caption_examples(
        model, tokenizer, examples, num_beams=generation["num_beams"], max_length=generation["max_length"],
        no_repeat_ngram_size=generation["no_repeat_ngram_size"], batch_size=1,
    )
    assert captions == [text.strip() for text in tokenizer.batch_decode(reference, skip_special_tokens=True)]


def test_clapart_caption_runs_an_imported_directory_end_to_end(imported: dict[str, Path], tmp_path: Path) -> None:
    from clapart_core.captioner.text import load_caption_tokenizer
    from clapart_core.corpus.audio import load_audio
    from clapart_core.encoders.clap import random_clap
    from clapart_core.encoders.encodec import random_encodec

    t = np.arange(int(0.4 * 24_000)) / 24_000
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    clip = tmp_path / "clip.wav"
    sf.write(clip, wave.astype(np.float32), 24_000, subtype="PCM_16")
    # --max-length 20 (meta.json's): the fixture's BART has only 40 decoder positions
    args = ["caption", str(clip), "--model", str(imported["out"]), "--device", "cpu", "--max-length", "20", "--format", "jsonl"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["file"] == str(clip) and record["error"] is None and record["flags"] == []
    caption = record["caption"]

    # the same clip through the front end the spec describes and the EnCLAP checkpoint itself
    def quantise(x: np.ndarray) -> np.ndarray:  # to the int16 grid, as the caption pipeline does
        return (np.round(x * 32767.0) / 32767.0).astype(np.float32)

    codes = random_encodec(ENCODEC_SPEC["random"], seed=ENCODEC_SPEC["seed"]).encode(quantise(load_audio(clip, 24_000)), 1.8)
    assert codes.shape == (30, N) and codes.max() >= K  # 0.4 s at 75 Hz; codes past the fixture's 50
    clap_model = random_clap(CLAP_SPEC["random"], seed=CLAP_SPEC["seed"])
    clap = clap_model.embed([quantise(load_audio(clip, clap_model.sample_rate))], [str(clip)])
    direct = ClapArtForCaptioning.from_enclap(imported["source"])
    ids = direct.generate_ids(torch.as_tensor(codes)[None], None, torch.as_tensor(clap), num_beams=4, max_length=20)
    tokenizer = load_caption_tokenizer(imported["tokenizer"])
    assert caption == tokenizer.batch_decode(ids, skip_special_tokens=True)[0].strip()
    assert caption  # the random model does produce words


def test_import_copies_a_local_clap_folder_into_the_model_directory(imported: dict[str, Path], tmp_path: Path) -> None:
    """--clap DIR (a local model folder) is copied to OUT/frontend/clap/DIR's name and recorded as
    that relative path: the directory names nothing outside itself and captions without the original."""
    from clapart_core.captioner.frontend import load_frontend
    from clapart_core.encoders.clap import random_clap

    clap = random_clap(CLAP_SPEC["random"], seed=CLAP_SPEC["seed"])
    local = tmp_path / "my-clap"
    clap.model.save_pretrained(str(local))
    clap.feature_extractor.save_pretrained(str(local))
    out = tmp_path / "model"
    args = ["import-enclap", str(imported["source"]), str(out), "--tokenizer", str(imported["tokenizer"]), "--encodec", json.dumps(ENCODEC_SPEC)]
    result = CliRunner().invoke(app, [*args, "--clap", str(local)])
    assert result.exit_code == 0, result.output
    front = load_frontend(out)
    assert front["clap"]["spec"] == {"checkpoint": "frontend/clap/my-clap", "seed": 0} and front["clap"]["pretrained"] is True
    assert (out / "frontend/clap/my-clap/config.json").is_file()
    shutil.rmtree(local)
    clip = tmp_path / "clip.wav"
    sf.write(clip, 0.3 * np.sin(np.arange(9600) / 24_000 * 2 * np.pi * 440).astype(np.float32), 24_000)
    result = CliRunner().invoke(app, ["caption", str(clip), "--model", str(out), "--device", "cpu", "--max-length", "20", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["caption"]


def test_import_refuses_a_front_end_that_cannot_make_the_checkpoints_codes(tmp_path: Path) -> None:
    """The fixture's K = 50 is no EnCodec codebook size (powers of two): refused in one sentence."""
    tokenizer = tiny_tokenizer(tmp_path / "tokenizer")
    result = CliRunner().invoke(
        app,
        ["import-enclap", str(CHECKPOINT), str(tmp_path / "model"), "--tokenizer", str(tokenizer),
         "--encodec", json.dumps(ENCODEC_SPEC), "--clap", json.dumps(CLAP_SPEC)],
    )
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "has codebooks of 64 codes but the checkpoint's have 50" in errors[0]
    assert not (tmp_path / "model").exists()


def test_import_names_a_missing_tokenizer_and_how_to_fetch_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    from clapart_core.encoders.clap import ModelNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # fail fast, no network
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError) as err:
        import_enclap(CHECKPOINT, tmp_path / "model", tokenizer="no-such-org/no-such-tokenizer")
    message = str(err.value)
    assert "hf download no-such-org/no-such-tokenizer" in message
    assert "\n" not in message and message.count(". ") == 0 and message.endswith(".")
