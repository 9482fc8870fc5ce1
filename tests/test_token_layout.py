"""``model.token_layout: time`` (issue 15 item 2): one encoder position per BEATs time step.

What is checked: a 30 s clip is read whole with ceil(frames / 8) + 2 (+1 CLAP) positions; padding
(a partial last step, shorter clips in a batch) never changes another clip's result; the step
embedding keeps the frequency identity; MCM masks whole time steps and its loss is the same in
slices as whole; a time-layout captioner trains, saves and reloads; the option is refused, in one
sentence, for tokens without a frequency axis; the flat layout builds no extra modules.
"""

import copy

import numpy as np
import pytest
import torch

from clapart_core.captioner.data import CaptionExample, build_batch
from clapart_core.captioner.generate import caption_examples
from clapart_core.captioner.model import ClapArtConfig, ClapArtForCaptioning, small_bart_config
from clapart_core.captioner.model_dir import load_captioner
from clapart_core.captioner.training import TokenLayoutError, backward_batch, layout_kwargs, train_captioner
from clapart_core.encoders.beats import num_patches
from clapart_core.encoders.registry import TOKEN_TYPES
from clapart_core.pipeline.config import PreflightError, preflight
from clapart_core.pipeline.params import load_params

pytestmark = pytest.mark.usefixtures("one_thread")

K, N, F_PATCHES, D, E, V = 12, 3, 8, 32, 6, 40
#: a 30 s clip's BEATs codes (16 kHz): 1,496 frames, past BART's 1,024 positions when flat
FRAMES_30S = num_patches(30 * 16000)


def time_model(embedding: str = "projection", use_clap: bool = True, seed: int = 0, max_frames: int = 200) -> ClapArtForCaptioning:
    torch.manual_seed(seed)
    config = ClapArtConfig(
        bart=small_bart_config(V, D, 1, 1, 2, 64, dropout=0.0, max_frames=max_frames),
        num_codebooks=N, codebook_size=K, clap_dim=E, use_clap=use_clap, max_frames=max_frames,
        token_layout="time", freq_patches=F_PATCHES, frequency_embedding=embedding, mcm_span=2,
    )
    return ClapArtForCaptioning(config).eval()


def codes_of(frames: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, K, (frames, N))).long()


@pytest.mark.parametrize("use_clap", [True, False])
def test_a_30s_clip_is_read_whole_with_one_position_per_time_step(use_clap):
    assert FRAMES_30S > 1016 and FRAMES_30S % 8 == 0
    model = time_model(use_clap=use_clap)
    for frames in (FRAMES_30S, FRAMES_30S - 3):  # a whole and a partial last step
        codes = codes_of(frames, 0)[None]
        hidden, mask = model.encode(codes, None, torch.randn(1, E) if use_clap else None)
        expected = -(-frames // 8) + 2 + (1 if use_clap else 0)
        assert hidden.shape == (1, expected, D) and mask.shape == (1, expected) and bool(mask.all())
    # the batch builder crops nothing either: max_codes = 200 steps x 8 frames
    example = CaptionExample("c", codes_of(FRAMES_30S, 1).numpy(), np.zeros(E, np.float32), ("x",))
    batch = build_batch([example], max_frames=model.config.max_codes, use_clap=use_clap, crop_generator=torch.Generator(), crop_step=8)
    assert batch.codes.shape[1] == FRAMES_30S


@pytest.mark.parametrize("embedding", ["projection", "tables"])
def test_padding_never_leaks_batched_equals_alone(embedding):
    """Clips of 61 (a partial last step), 16 and 120 frames: the batched encoder states and caption
    logits of each clip equal its own, and what the padding holds changes nothing."""
    model = time_model(embedding)
    lengths = [61, 16, 120]
    clips = [codes_of(n, i) for i, n in enumerate(lengths)]
    clap = torch.randn(3, E)
    labels = torch.tensor([[0, 5, 6, 2], [0, 7, 2, -100], [0, 8, 9, 2]])
    longest = max(lengths)
    codes = torch.full((3, longest, N), 0, dtype=torch.long)
    frame_mask = torch.zeros(3, longest, dtype=torch.bool)
    for row, clip in enumerate(clips):
        codes[row, : len(clip)] = clip
        frame_mask[row, : len(clip)] = True
    garbage = codes.clone()
    garbage[~frame_mask] = torch.randint(0, K, (int((~frame_mask).sum()), N))
    with torch.no_grad():
        batched = model(codes, frame_mask, clap, labels=labels.clamp(min=0))
        batched_garbage = model(garbage, frame_mask, clap, labels=labels.clamp(min=0))
        for row, clip in enumerate(clips):
            alone = model(clip[None], None, clap[row : row + 1], labels=labels[row : row + 1].clamp(min=0))
            positions = -(-len(clip) // 8) + 3
            assert alone.encoder_last_hidden_state.shape[1] == positions
            assert int(batched.encoder_attention_mask[row].sum()) == positions
            for out in (batched, batched_garbage):
                torch.testing.assert_close(out.encoder_last_hidden_state[row, :positions], alone.encoder_last_hidden_state[0], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(out.logits[row], alone.logits[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("embedding", ["projection", "tables"])
def test_the_step_embedding_keeps_the_frequency_identity(embedding):
    """Swapping two patches' codes within a time step changes its embedding (a plain sum over the
    patches would not), and the number of tables/heads is as documented."""
    model = time_model(embedding)
    codes = codes_of(16, 3).reshape(1, 2, F_PATCHES, N)
    swapped = codes.clone()
    swapped[0, 0, [0, 5]] = codes[0, 0, [5, 0]]
    assert not torch.equal(codes[0, 0, 0], codes[0, 0, 5])
    with torch.no_grad():
        a, b = model.embed_time_steps(codes), model.embed_time_steps(swapped)
    assert not torch.allclose(a[0, 0], b[0, 0])
    torch.testing.assert_close(a[0, 1], b[0, 1])  # the other step is untouched
    tables = N * (F_PATCHES if embedding == "tables" else 1)
    assert len(model.code_embeddings) == len(model.mcm_heads) == tables
    assert (model.frequency_fold is None) == (embedding == "tables")


def test_mcm_masks_whole_time_steps_and_its_loss_adds_up_over_slices():
    model = time_model("projection")
    model.config.mcm_prob = 0.5
    lengths = [61, 40, 120]
    frame_mask = torch.zeros(3, 120, dtype=torch.bool)
    for row, n in enumerate(lengths):
        frame_mask[row, :n] = True
    mask = model.mask_codes(torch.zeros(3, 120, N, dtype=torch.long), frame_mask, torch.Generator().manual_seed(0))
    assert mask.shape == (3, 120, N) and mask.any()
    assert not (mask & ~frame_mask[:, :, None]).any()  # never on padding
    grouped = model.group_time_steps(mask, False)  # [B, P, F, N]
    for row, n in enumerate(lengths):
        steps = n // 8  # whole steps: every patch of a masked step is masked
        block = grouped[row, :steps]
        assert torch.equal(block, block[:, :1].expand_as(block))

    # backward_batch in slices of 1 row gives the whole batch's losses (the counts are flat entries)
    codes = torch.randint(0, K, (3, 120, N))
    labels = torch.tensor([[0, 5, 6, 2], [0, 7, 2, -100], [0, 8, 9, 2]])
    from clapart_core.captioner.data import Batch

    batch = Batch(codes=codes, frame_mask=frame_mask, clap=torch.randn(3, E), labels=labels)
    whole = backward_batch(copy.deepcopy(model), batch, mask, 3, torch.device("cpu"), _null)
    sliced = backward_batch(copy.deepcopy(model), batch, mask, 1, torch.device("cpu"), _null)
    assert float(whole.mcm_loss) > 0
    torch.testing.assert_close(sliced.mcm_loss, whole.mcm_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sliced.loss, whole.loss, rtol=1e-5, atol=1e-6)


class _null:
    """A do-nothing autocast context."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


MODEL_PARAMS = dict(
    pretrained=None, tokenizer=None, vocab_size=300, codebook_size=8, d_model=32, encoder_layers=1, decoder_layers=1,
    attention_heads=2, ffn_dim=64, dropout=0.0, use_clap=True, max_frames=6,
    token_layout="time", frequency_embedding="tables", freq_patches=8,
)
TRAIN_PARAMS = dict(
    epochs=1, batch_size=4, lr=3e-3, warmup_steps=1, weight_decay=0.01, label_smoothing=0.2, grad_clip=1.0,
    mcm_weight=0.7, mcm_prob=0.3, mcm_span=2, device="cpu", bf16=False, num_threads=1, log_every=1,
)


def test_a_time_layout_captioner_trains_crops_in_time_steps_saves_and_reloads(tmp_path):
    """max_frames 6 time steps = 48 frames: clips of 37-100 frames are cropped on the grid; the
    saved config keeps the layout, and the reloaded model captions the clips."""
    rng = np.random.default_rng(0)
    examples = [
        CaptionExample(f"c{i}", rng.integers(0, 8, (37 + 9 * i, 2)).astype(np.int16), rng.standard_normal(6).astype(np.float32), (f"sound {i}",))
        for i in range(8)
    ]
    summary = train_captioner(examples, [], model_params=MODEL_PARAMS, train_params=TRAIN_PARAMS, out_dir=tmp_path / "m", live_dir=None, seed=0)
    assert np.isfinite(summary["final_mcm_loss"]) and summary["final_mcm_loss"] > 0
    model, tokenizer = load_captioner(tmp_path / "m")
    assert (model.config.token_layout, model.config.freq_patches, model.config.frequency_embedding) == ("time", 8, "tables")
    assert model.config.max_codes == 48 and len(model.code_embeddings) == 16
    assert len(caption_examples(model, tokenizer, examples, max_length=8, progress=False)) == 8


def test_the_time_layout_is_refused_without_a_frequency_axis():
    with pytest.raises(TokenLayoutError, match=r"^params\.yaml: model\.token_layout = time needs tokens with a frequency axis"):
        layout_kwargs({"token_layout": "time", "freq_patches": 1})
    assert layout_kwargs({"token_layout": "flat", "freq_patches": 8})["freq_patches"] == 1
    params = load_params()
    params["model"]["token_layout"] = "time"
    params["encoder"]["type"] = "encodec"
    with pytest.raises(PreflightError) as err:
        preflight(params)
    assert str(err.value) == (
        "params.yaml: model.token_layout = time needs tokens with a frequency axis, but encodec tokens have one code per time step; "
        "use model.token_layout: flat"
    )
    params["model"]["max_frames"] = 1000  # time steps: need not be a multiple of 8
    for name, kind in TOKEN_TYPES.items():  # BEATs-RVQ and BEATs-AT pass, every type without a frequency axis is refused
        params["encoder"]["type"] = name
        if kind.freq_patches > 1:
            preflight(params)
        else:
            with pytest.raises(PreflightError, match=f"but {name} tokens have one code per time step"):
                preflight(params)
    assert {n for n, k in TOKEN_TYPES.items() if k.freq_patches > 1} == {"beats_rvq", "beats_tokenizer"}


def test_the_flat_layout_is_unchanged():
    """Flat (the default) builds no frequency modules and N tables/heads, and the same seed gives
    the same weights as a config that never heard of layouts."""
    torch.manual_seed(0)
    bart = small_bart_config(V, D, 1, 1, 2, 64, max_frames=60)
    flat = ClapArtForCaptioning(ClapArtConfig(bart=bart, num_codebooks=N, codebook_size=K, clap_dim=E, max_frames=60))
    assert flat.config.token_layout == "flat" and flat.config.max_codes == 60
    assert flat.frequency_fold is None and len(flat.code_embeddings) == N
    assert not any(name.startswith("frequency_") for name in flat.state_dict())
    torch.manual_seed(0)
    again = ClapArtForCaptioning(
        ClapArtConfig(
            bart=small_bart_config(V, D, 1, 1, 2, 64, max_frames=60), num_codebooks=N, codebook_size=K, clap_dim=E, max_frames=60,
            token_layout="flat", freq_patches=8, frequency_embedding="tables",
        )
    )
    for (name, a), (_, b) in zip(flat.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_reranking_reads_the_whole_clip_in_the_time_layout():
    """The reranker's log-likelihoods see every time step the model reads (max_frames steps =
    max_codes flat codes), not only max_frames flat codes: a 150-frame clip under max_frames 20
    (160 codes) scores differently from its first 20 frames."""
    from clapart_core.captioner.rerank import sequence_logliks

    model = time_model(max_frames=20)
    codes = codes_of(150, 5).numpy()
    clap = np.random.default_rng(5).standard_normal(E).astype(np.float32)
    ids = torch.tensor([[2, 0, 5, 6, 2], [2, 0, 7, 2, 1]])
    whole = sequence_logliks(model, CaptionExample("c", codes, clap, ("x",)), ids)
    head = sequence_logliks(model, CaptionExample("c", codes[:20], clap, ("x",)), ids)
    assert model.config.max_codes == 160 and whole.shape == (2,)
    assert not np.allclose(whole, head)
