"""The ART-token BART captioner: encoder input layout, MCM, losses, saving and generation."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, BartForConditionalGeneration

from clapart_core.captioner.model import (
    ClapArtConfig,
    ClapArtForCaptioning,
    crop_frames,
    mcm_codebook_weights,
    sample_mcm_mask,
    small_bart_config,
)
from clapart_core.captioner.text import train_caption_tokenizer

N_CODEBOOKS, K, E, D, V = 4, 16, 8, 32, 64


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(use_clap: bool = True, seed: int = 0, **overrides) -> ClapArtForCaptioning:
    torch.manual_seed(seed)
    bart = small_bart_config(V, D, 1, 1, 2, 64, dropout=0.0, max_frames=60)
    config = ClapArtConfig(
        bart=bart, num_codebooks=N_CODEBOOKS, codebook_size=K, clap_dim=E, use_clap=use_clap, max_frames=60, **overrides
    )
    return ClapArtForCaptioning(config)


def tiny_batch(batch: int = 3, frames: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, K, (batch, frames, N_CODEBOOKS), generator=g)
    frame_mask = torch.ones(batch, frames, dtype=torch.bool)
    frame_mask[1, 13:] = False  # a padded clip in the middle of the batch
    clap = torch.randn(batch, E, generator=g)
    labels = torch.randint(4, V, (batch, 7), generator=g)
    labels[:, 0], labels[:, -1] = 0, 2
    labels[2, 5:] = -100
    labels[2, 4] = 2
    return codes, frame_mask, clap, labels


def capture_embeddings(model: ClapArtForCaptioning, *args) -> torch.Tensor:
    """The encoder input (token + position embeddings) right before BART's layernorm_embedding."""
    seen = {}

    def record(module, inputs):
        seen["x"] = inputs[0].detach().clone()

    hook = model.bart.model.encoder.layernorm_embedding.register_forward_pre_hook(record)
    try:
        model.encode(*args)
    finally:
        hook.remove()
    return seen["x"]


def test_forward_backward_with_clap_reaches_codebooks_and_clap_projection():
    model = tiny_model(use_clap=True)
    codes, frame_mask, clap, labels = tiny_batch()
    mcm_mask = model.mask_codes(codes, frame_mask, torch.Generator().manual_seed(1))
    out = model(codes, frame_mask, clap, labels=labels, mcm_mask=mcm_mask)
    assert out.logits.shape == (3, 7, V)
    assert out.encoder_last_hidden_state.shape == (3, 20 + 3, D)
    assert torch.allclose(out.loss, out.caption_loss + 0.7 * out.mcm_loss)
    out.loss.backward()
    for i, table in enumerate(model.code_embeddings):
        assert table.weight.grad is not None and table.weight.grad.abs().sum() > 0, f"codebook {i} got no gradient"
        assert torch.all(table.weight.grad[K] == 0), "pad row must not learn"
    assert model.clap_projection.weight.grad.abs().sum() > 0
    assert model.mcm_heads[0].weight.grad.abs().sum() > 0


def test_without_clap_the_slot_and_projection_are_gone():
    with_clap, without = tiny_model(use_clap=True), tiny_model(use_clap=False)
    codes, frame_mask, clap, labels = tiny_batch()
    hidden_with, mask_with = with_clap.encode(codes, frame_mask, clap)
    hidden_without, mask_without = without.encode(codes, frame_mask, None)
    assert hidden_without.shape[1] == hidden_with.shape[1] - 1
    assert mask_without.shape[1] == mask_with.shape[1] - 1
    assert without.clap_projection is None
    assert not any("clap" in name for name, _ in without.named_parameters())
    out = without(codes, frame_mask, None, labels=labels)
    out.loss.backward()
    assert without.code_embeddings[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="use_clap"):
        with_clap.encode(codes, frame_mask, None)


def test_encoder_input_layout_sums_codebooks_and_gives_clap_slot_no_position():
    model = tiny_model(use_clap=True).eval()
    codes, frame_mask, clap, _ = tiny_batch()
    x = capture_embeddings(model, codes, frame_mask, clap)  # [B, T + 3, D]
    encoder = model.bart.model.encoder
    positions = encoder.embed_positions.weight  # row p + 2 is BART position p
    tokens = encoder.embed_tokens.weight
    # slot 0: projected, L2-normalised CLAP and nothing else (no position row added)
    expected_clap = model.clap_projection(F.normalize(clap, dim=-1))
    assert torch.allclose(x[:, 0], expected_clap, atol=1e-6)
    # <s> takes BART position 0
    assert torch.allclose(x[0, 1], tokens[0] + positions[2], atol=1e-6)
    # frame t (0-based) = sum of its N codebook rows + position t + 1
    for t in (0, 7, 19):
        summed = sum(model.code_embeddings[i].weight[codes[0, t, i]] for i in range(N_CODEBOOKS))
        assert torch.allclose(x[0, 2 + t], summed + positions[t + 1 + 2], atol=1e-6)
    # the padded clip (13 frames) ends with </s> right after its last frame
    assert torch.allclose(x[1, 2 + 13], tokens[2] + positions[13 + 1 + 2], atol=1e-6)
    assert torch.allclose(x[0, 2 + 20], tokens[2] + positions[20 + 1 + 2], atol=1e-6)
    # CLAP is normalised: its scale does not matter
    h1, _ = model.encode(codes, frame_mask, clap)
    h2, _ = model.encode(codes, frame_mask, 5.0 * clap)
    assert torch.allclose(h1, h2, atol=1e-5)


def test_padding_does_not_change_a_clips_encoding_or_logits():
    model = tiny_model(use_clap=True).eval()
    codes, frame_mask, clap, labels = tiny_batch()
    full = model(codes, frame_mask, clap, labels=labels)
    alone = model(codes[1:2, :13], None, clap[1:2], labels=labels[1:2])
    n = 13 + 3
    assert full.encoder_attention_mask[1].sum() == n
    assert torch.allclose(full.encoder_last_hidden_state[1, :n], alone.encoder_last_hidden_state[0], atol=1e-5)
    assert torch.allclose(full.logits[1], alone.logits[0], atol=1e-5)


def test_masked_codes_use_the_mask_row_not_the_pad_row():
    model = tiny_model(use_clap=False).eval()
    config = model.config
    assert config.mask_code_id == K + 1 and config.pad_code_id == K
    codes, frame_mask, _, labels = tiny_batch()
    mcm_mask = torch.zeros(*codes.shape, dtype=torch.bool)
    mcm_mask[0, 3, 2] = True
    seen = {}

    def record(module, inputs, output):
        seen["ids"] = inputs[0].clone()

    hook = model.code_embeddings[2].register_forward_hook(record)
    model(codes, frame_mask, None, labels=labels, mcm_mask=mcm_mask)
    hook.remove()
    assert seen["ids"][0, 3] == K + 1
    assert seen["ids"][1, 15] == K  # padding frame of the short clip
    assert seen["ids"][0, 4] == codes[0, 4, 2]


def masked_runs(row: torch.Tensor) -> list[int]:
    """Lengths of maximal runs of True in a 1-D bool tensor."""
    runs, current = [], 0
    for value in row.tolist() + [False]:
        if value:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs


def test_mcm_mask_statistics_spans_independence_and_padding():
    batch, frames, n = 48, 400, 8
    lengths = torch.randint(300, frames + 1, (batch,), generator=torch.Generator().manual_seed(0))
    frame_mask = torch.arange(frames)[None, :] < lengths[:, None]
    gen = torch.Generator().manual_seed(123)
    mask = sample_mcm_mask(frame_mask, n, prob=0.15, span=10, generator=gen)
    assert mask.shape == (batch, frames, n)
    assert not (mask & ~frame_mask[:, :, None]).any(), "padding must never be masked"
    # interior coverage matches 1 - (1 - p/span)^span ≈ 0.140 (at most p = 0.15)
    interior = mask[:, 10:290]  # every clip has >= 300 frames
    expected = 1 - (1 - 0.015) ** 10
    assert abs(interior.float().mean().item() - expected) < 0.012
    # spans are 10 frames long: every masked run is >= 10 and most are exactly 10
    runs = [r for b in range(batch) for i in range(n) for r in masked_runs(mask[b, :, i])]
    assert min(runs) >= 10
    assert sum(r == 10 for r in runs) / len(runs) > 0.5
    # independence across codebooks: joint rate ≈ product of marginals, codebooks differ
    a, b = interior[..., 0].float(), interior[..., 1].float()
    assert abs((a * b).mean().item() - a.mean().item() * b.mean().item()) < 0.01
    assert not torch.equal(mask[..., 0], mask[..., 1])
    # redrawn each batch as the generator advances; reproducible from the same seed
    again = sample_mcm_mask(frame_mask, n, 0.15, 10, gen)
    assert not torch.equal(mask, again)
    assert torch.equal(mask, sample_mcm_mask(frame_mask, n, 0.15, 10, torch.Generator().manual_seed(123)))


def test_mcm_loss_weights_codebook_i_by_half_to_the_i_plus_one():
    assert mcm_codebook_weights(4) == [0.5, 0.25, 0.125, 0.0625]
    model = tiny_model(use_clap=True).eval()
    codes, frame_mask, clap, labels = tiny_batch()
    for i in (0, 3):
        mcm_mask = torch.zeros(*codes.shape, dtype=torch.bool)
        mcm_mask[0, 2:12, i] = True
        out = model(codes, frame_mask, clap, labels=labels, mcm_mask=mcm_mask)
        frames = out.encoder_last_hidden_state[0, 2 + 2 : 2 + 12]
        manual = F.cross_entropy(model.mcm_heads[i](frames), codes[0, 2:12, i])
        assert torch.allclose(out.mcm_loss, manual / 2 ** (i + 1), atol=1e-6)
    # no masked entry at all: MCM loss is exactly 0, never NaN
    empty = model(codes, frame_mask, clap, labels=labels, mcm_mask=torch.zeros(*codes.shape, dtype=torch.bool))
    assert empty.mcm_loss.item() == 0.0


def test_caption_loss_is_label_smoothed_and_ignores_padding():
    model = tiny_model(use_clap=True, label_smoothing=0.2).eval()
    codes, frame_mask, clap, labels = tiny_batch()
    out = model(codes, frame_mask, clap, labels=labels)
    keep = labels != -100
    manual = F.cross_entropy(out.logits[keep], labels[keep], label_smoothing=0.2)
    assert torch.allclose(out.caption_loss, manual, atol=1e-6)
    assert not torch.allclose(out.caption_loss, F.cross_entropy(out.logits[keep], labels[keep]), atol=1e-4)


def test_save_and_reload_gives_identical_logits(tmp_path):
    model = tiny_model(use_clap=True).eval()
    codes, frame_mask, clap, labels = tiny_batch()
    model.save_pretrained(tmp_path)
    reloaded = ClapArtForCaptioning.from_pretrained(tmp_path).eval()
    assert torch.equal(model(codes, frame_mask, clap, labels=labels).logits, reloaded(codes, frame_mask, clap, labels=labels).logits)
    # tied BART embeddings stay tied after loading
    assert reloaded.bart.lm_head.weight.data_ptr() == reloaded.bart.model.shared.weight.data_ptr()
    assert type(AutoModel.from_pretrained(tmp_path)) is ClapArtForCaptioning


def test_from_bart_keeps_pretrained_weights(tmp_path):
    torch.manual_seed(3)
    bart = BartForConditionalGeneration(small_bart_config(V, D, 1, 1, 2, 64, max_frames=60))
    bart.save_pretrained(tmp_path / "bart")
    model = ClapArtForCaptioning.from_bart(tmp_path / "bart", num_codebooks=N_CODEBOOKS, codebook_size=K, clap_dim=E, max_frames=60)
    for name, value in bart.state_dict().items():
        assert torch.equal(model.bart.state_dict()[name], value), name
    assert model.bart.lm_head.weight.data_ptr() == model.bart.model.shared.weight.data_ptr()
    with pytest.raises(FileNotFoundError):
        ClapArtForCaptioning.from_bart(tmp_path / "missing", num_codebooks=2, codebook_size=K)


def test_config_rejects_crops_longer_than_bart_positions():
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ClapArtConfig(bart=small_bart_config(V, D, 1, 1, 2, 64, max_frames=60), max_frames=1020)


def test_beam_search_returns_text_without_repeated_trigrams():
    model = tiny_model(use_clap=True)
    model.train()
    tokenizer = train_caption_tokenizer(["a dog barks loudly", "rain falls on a roof"] * 5, vocab_size=V + 256)
    # resize the toy model's vocabulary to the tokenizer's
    model.bart.resize_token_embeddings(len(tokenizer))
    codes, frame_mask, clap, _ = tiny_batch()
    texts = model.generate_captions(codes, frame_mask, clap, tokenizer, num_beams=4, no_repeat_ngram_size=3, max_length=20)
    assert model.training, "generate_captions must restore the training mode"
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    ids = model.eval().generate_ids(codes, frame_mask, clap, num_beams=4, no_repeat_ngram_size=3, max_length=20)
    assert ids.shape[1] <= 20
    for row in ids.tolist():
        trigrams = [tuple(row[i : i + 3]) for i in range(len(row) - 2) if 1 not in row[i : i + 3]]
        assert len(trigrams) == len(set(trigrams))


def test_crop_frames_random_for_training_first_frames_for_eval():
    codes = torch.arange(50)[:, None].repeat(1, 2)
    assert torch.equal(crop_frames(codes, 20, None), codes[:20])
    assert torch.equal(crop_frames(codes, 80, torch.Generator()), codes)
    gen = torch.Generator().manual_seed(0)
    starts = {int(crop_frames(codes, 20, gen)[0, 0]) for _ in range(30)}
    assert len(starts) > 5 and min(starts) >= 0 and max(starts) <= 30
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(crop_frames(codes, 20, gen_a), crop_frames(codes, 20, gen_b))
