"""The EnCLAP-style BART captioner reading ART (audio residual token) codes.

Encoder input, as in the official EnCLAP code (design.md, "The captioner")::

    position:   0            1      2 … T+1            T+2
    content:    CLAP slot    <s>    frame_1 … frame_T  </s>
    positions:  (none)       0      1 … T              T+1      (BART's learned positions)

* each frame embedding is the **sum over the N codebooks** of one ``nn.Embedding(K + 2, d_model)``
  per codebook (rows ``K`` = pad, ``K + 1`` = mask; no vocabulary offsets);
* the CLAP slot is ``Linear(E, d_model)`` of the L2-normalised CLAP audio embedding (as given,
  with ``normalize_clap=False``, as EnCLAP's model does) and gets no position embedding;
  ``use_clap=False`` removes the slot (the sequence is one shorter);
* ``<s>``/``</s>`` use BART's own token embeddings, so a pretrained BART keeps its meaning for them.

Masked codec modelling (MCM) replaces spans of codes with the mask id, independently per codebook,
and N heads ``Linear(d_model, K)`` on the final encoder states predict the original codes. The
decoder is BART's, trained with label-smoothed cross-entropy; captions are generated with transformers'
beam search on the wrapped ``BartForConditionalGeneration`` given our encoder's output.

Token layouts (``token_layout``; issue 15 item 2). The model's *input* is always the tokens' flat code
sequence ``[B, T, N]`` (BEATs: index ``8 t + f``, F = ``freq_patches`` codes per time step);
``token_layout`` decides what one encoder position is:

* ``flat`` (EnCLAP's, the default): one position per code frame, as above.
* ``time``: one position per *time step*. The flat codes are regrouped ``[B, T, N] -> [B, ceil(T/F), F, N]``
  (a partial last step is padded with the pad id, which embeds to zero) and each step's F x N codes
  become one embedding that keeps the frequency identity, chosen by ``frequency_embedding``:

  - ``tables`` (default): one table per (frequency, codebook), ``sum_{f,n} E_{f,n}[c_{t,f,n}]``, and F x N
    heads. F times the front end's parameters (~176 M more at the paper's N=16, K=1024, D=768).
  - ``projection``: the flat layout's N shared tables give one vector per patch
    ``x_f = sum_n E_n[c_{t,f,n}]`` and a learned per-frequency linear map folds them,
    ``sum_f W_f x_f`` = ``Linear(F*D, D)`` of the concatenation; MCM unfolds each step's final
    state with ``Linear(D, F*D)`` and the N heads predict each patch's code. ~9 M parameters more
    than the flat layout at that size, but on the demo it learned far less (docs/design-notes.md).

  (An *additive* frequency embedding ``sum_f (x_f + e_f)`` would not do: summed over f it is a
  constant, so the band identity would be lost.) MCM masks spans of time steps, independently per
  codebook, covering every frequency patch of the step; ``max_frames`` and ``mcm_span`` count
  time steps.

Shapes: B batch, T frames, N codebooks, K codebook size, E CLAP dim, D d_model, S encoder length
(P + 2, plus 1 with CLAP, where P = T positions in the flat layout, ceil(T / F) in the time layout),
L caption length, V caption vocabulary, F frequency patches per time step.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    BartConfig,
    BartForConditionalGeneration,
    GenerationConfig,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutput, ModelOutput
from transformers.models.bart.modeling_bart import shift_tokens_right

logger = logging.getLogger(__name__)

#: ignore index of caption labels and MCM targets (PyTorch's cross-entropy default)
IGNORE_INDEX = -100
#: ``token_layout`` values: one encoder position per code frame, or per time step
TOKEN_LAYOUTS = ("flat", "time")
#: ``frequency_embedding`` values (time layout only)
FREQUENCY_EMBEDDINGS = ("tables", "projection")


class ClapArtConfig(PreTrainedConfig):
    """Configuration of [`ClapArtForCaptioning`]: a BART config plus the ART-token front end.

    Args:
        bart: the wrapped BART's configuration (`BartConfig` or its dict; default: BART's defaults).
        num_codebooks: N, codebooks per frame (``rvq.layers``).
        codebook_size: K, codes per codebook; embedding rows K and K+1 are pad and mask.
        clap_dim: E, CLAP embedding size (512 for LAION CLAP).
        use_clap: prepend the CLAP slot (False: the paper's Table 2 ablation).
        normalize_clap: L2-normalise the CLAP embedding before the projection (True, clapart's
            default); False feeds it as given, as EnCLAP's model does (checkpoints imported with
            [`ClapArtForCaptioning.from_enclap`] use False; both see unit-norm embeddings).
        max_frames: encoder crop in encoder *positions*: code frames in the flat layout, time steps
            (``freq_patches`` code frames each) in the time layout, so [`max_codes`] flat codes are
            read; ``max_frames + 2`` must fit BART's ``max_position_embeddings``.
        mcm_prob: expected fraction of positions covered by mask spans, per codebook (see
            [`sample_mcm_mask`]).
        mcm_span: MCM span length in positions (frames, or time steps in the time layout).
        mcm_weight: λ multiplying the summed MCM loss.
        label_smoothing: caption cross-entropy label smoothing.
        token_layout: ``"flat"`` (one encoder position per code frame) or ``"time"`` (one per time
            step of ``freq_patches`` frames; see the module docstring).
        freq_patches: F, code frames per time step of the tokens (BEATs: 8); the time layout needs > 1.
        frequency_embedding: how the time layout keeps the frequency identity: ``"tables"``
            (per-frequency code tables and heads) or ``"projection"`` (shared code tables +
            per-frequency linear maps); unused in the flat layout.
    """

    model_type = "clapart"
    sub_configs_defaults = {"bart": BartConfig}

    bart: BartConfig | dict | None = None
    num_codebooks: int = 16
    codebook_size: int = 1024
    clap_dim: int = 512
    use_clap: bool = True
    normalize_clap: bool = True
    max_frames: int = 1016  # 1016 + <s>, </s> fit 1024 positions; a multiple of BEATs' 8 frequency patches
    mcm_prob: float = 0.15
    mcm_span: int = 10
    mcm_weight: float = 0.7
    label_smoothing: float = 0.2
    token_layout: str = "flat"
    freq_patches: int = 1
    frequency_embedding: str = "tables"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # Older 5.x releases do not apply `sub_configs_defaults`; resolve the sub-config here too
        # (transformers also builds a default `ClapArtConfig()` when saving, with bart=None).
        if self.bart is None:
            self.bart = BartConfig()
        elif isinstance(self.bart, dict):
            self.bart = BartConfig(**self.bart)
        # `<s>` and `</s>` take two positions besides the frames; the CLAP slot takes none.
        if self.max_frames + 2 > self.bart.max_position_embeddings:
            raise ValueError(
                f"max_frames={self.max_frames} needs {self.max_frames + 2} positions but BART has "
                f"max_position_embeddings={self.bart.max_position_embeddings}"
            )
        if self.mcm_span < 1 or not 0.0 <= self.mcm_prob <= 1.0:
            raise ValueError(f"invalid MCM settings: mcm_prob={self.mcm_prob}, mcm_span={self.mcm_span}")
        if self.token_layout not in TOKEN_LAYOUTS or self.frequency_embedding not in FREQUENCY_EMBEDDINGS:
            raise ValueError(f"invalid layout: token_layout={self.token_layout!r}, frequency_embedding={self.frequency_embedding!r}")
        if self.token_layout == "time" and self.freq_patches < 2:
            raise ValueError(f"token_layout='time' needs tokens with a frequency axis (freq_patches > 1), got freq_patches={self.freq_patches}")

    @property
    def is_time_layout(self) -> bool:
        """One encoder position per time step of ``freq_patches`` code frames."""
        return self.token_layout == "time"

    @property
    def max_codes(self) -> int:
        """Flat code frames the encoder reads at most: ``max_frames`` positions of 1 or F frames each."""
        return self.max_frames * self.freq_patches if self.is_time_layout else self.max_frames

    @property
    def pad_code_id(self) -> int:
        """Embedding row for padded frames (zero vector, no gradient)."""
        return self.codebook_size

    @property
    def mask_code_id(self) -> int:
        """Embedding row for MCM-masked codes (learned, distinct from pad)."""
        return self.codebook_size + 1


@dataclass
class ClapArtOutput(ModelOutput):
    """Output of [`ClapArtForCaptioning.forward`].

    Attributes:
        loss: ``caption_loss + mcm_weight * mcm_loss`` (scalar), when labels are given.
        caption_loss: label-smoothed caption cross-entropy (scalar).
        mcm_loss: un-scaled MCM loss ``sum_i 2^-(i+1) CE_i`` (scalar), when an MCM mask is given.
        logits: caption logits ``[B, L, V]``.
        encoder_last_hidden_state: ``[B, S, D]``.
        encoder_attention_mask: ``[B, S]`` bool, True = attended.
    """

    loss: torch.Tensor | None = None
    caption_loss: torch.Tensor | None = None
    mcm_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_attention_mask: torch.Tensor | None = None


def mcm_codebook_weights(num_codebooks: int) -> list[float]:
    """MCM loss weight of codebook i: ``1 / 2^(i+1)`` (coarse residual layers count most)."""
    return [1.0 / 2 ** (i + 1) for i in range(num_codebooks)]


def sample_mcm_mask(
    frame_mask: torch.Tensor,
    num_codebooks: int,
    prob: float,
    span: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Draw the MCM mask: spans of ``span`` frames, independently for every codebook.

    Every frame ``t`` of every codebook starts a span with probability ``prob / span``, so the
    expected number of spans per codebook is ``prob * T / span`` and at most a fraction ``prob`` of
    entries is masked (overlaps make it slightly less: ``1 - (1 - prob/span)^span`` ≈ 0.14 for the
    defaults). This is the expectation of the official EnCLAP masking (transformers'
    ``_compute_mask_indices``, where ``mask_prob`` is the masked fraction, not a start
    probability). A span may only start where it ends inside the clip, so padding is never masked.

    Args:
        frame_mask: ``[B, T]`` bool, True = valid frame (right-padded).
        num_codebooks: N.
        prob, span: ``mcm_prob`` and ``mcm_span``.
        generator: explicit RNG (on ``frame_mask``'s device) so that masks are reproducible and
            redrawn every batch as the generator advances.

    Returns:
        ``[B, T, N]`` bool, True = masked.
    """
    batch, frames = frame_mask.shape
    lengths = frame_mask.sum(dim=1)  # [B]
    position = torch.arange(frames, device=frame_mask.device)
    can_start = (position[None, :] + span) <= lengths[:, None]  # [B, T]
    draws = torch.rand((batch, frames, num_codebooks), generator=generator, device=frame_mask.device)
    starts = (draws < prob / span) & can_start[:, :, None]  # [B, T, N]
    # Frame t is masked iff a span started in [t - span + 1, t]: a windowed count via cumsum.
    count = starts.cumsum(dim=1)
    lagged = F.pad(count, (0, 0, span, 0))[:, :frames]  # count shifted down by `span` frames
    return (count - lagged) > 0


def crop_frames(
    codes: torch.Tensor, max_frames: int, generator: torch.Generator | None, step: int = 1
) -> torch.Tensor:
    """Crop one clip's codes ``[T, N]`` to at most ``max_frames`` frames.

    With a generator (training) the window start is uniform over the valid starts that are
    multiples of ``step``; without one (evaluation) the first ``max_frames`` frames are kept, as
    in EnCLAP. ``step`` is the token type's codes per time step (BEATs: 8 frequency patches, so
    that position mod 8 keeps meaning the frequency band; EnCodec: 1, EnCLAP's any-start crop).
    With ``step`` 1 the draw is exactly the any-start one (same generator use, same start).
    """
    frames = codes.shape[0]
    if frames <= max_frames:
        return codes
    if generator is None:
        return codes[:max_frames]
    slots = (frames - max_frames) // step + 1
    start = step * int(torch.randint(0, slots, (1,), generator=generator).item())
    return codes[start : start + max_frames]


class ClapArtPreTrainedModel(PreTrainedModel):
    """Weight-init and loading plumbing shared by the ClapArt models."""

    config: ClapArtConfig
    base_model_prefix = "clapart"
    supports_gradient_checkpointing = False
    _no_split_modules = [r"BartEncoderLayer", r"BartDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True

    def _init_weights(self, module: nn.Module) -> None:
        """BART's scheme (normal(0, init_std), zero bias, zero padding row) for every module.

        ``transformers.initialization`` functions skip tensors already loaded from a checkpoint,
        so ``from_pretrained`` only initialises what the checkpoint lacks.
        """
        std = self.config.bart.init_std
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            # the padding-row check must come first: slicing the weight loses its "loaded" flag
            if not getattr(module.weight, "_is_hf_initialized", False):
                init.normal_(module.weight, mean=0.0, std=std)
                if module.padding_idx is not None:
                    init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, BartForConditionalGeneration):
            init.zeros_(module.final_logits_bias)


class ClapArtForCaptioning(ClapArtPreTrainedModel):
    """BART captioner over summed multi-codebook ART embeddings, an optional CLAP slot and MCM heads.

    Submodules:
        bart: the wrapped ``BartForConditionalGeneration``; its encoder *layers*, ``embed_positions``,
            ``layernorm_embedding`` and token embeddings are reused by [`encode`], its decoder and LM
            head generate the caption.
        code_embeddings: N tables ``[K + 2, D]`` (F x N, index ``f * N + n``, in the time layout
            with ``frequency_embedding="tables"``).
        clap_projection: ``Linear(E, D)``, absent when ``use_clap=False``.
        mcm_heads: N ``Linear(D, K)`` (F x N with per-frequency tables).
        frequency_fold, frequency_unfold: ``Linear(F*D, D)`` and ``Linear(D, F*D)``, only in the time
            layout with ``frequency_embedding="projection"``.
    """

    def __init__(self, config: ClapArtConfig):
        super().__init__(config)
        d_model = config.bart.d_model
        self.bart = BartForConditionalGeneration(config.bart)
        per_frequency = config.is_time_layout and config.frequency_embedding == "tables"
        tables = config.num_codebooks * (config.freq_patches if per_frequency else 1)
        self.code_embeddings = nn.ModuleList(
            nn.Embedding(config.codebook_size + 2, d_model, padding_idx=config.pad_code_id)
            for _ in range(tables)
        )
        self.clap_projection = nn.Linear(config.clap_dim, d_model) if config.use_clap else None
        self.mcm_heads = nn.ModuleList(
            nn.Linear(d_model, config.codebook_size) for _ in range(tables)
        )
        # Created after the flat layout's modules, so a flat model draws exactly the same weights.
        projection = config.is_time_layout and not per_frequency
        self.frequency_fold = nn.Linear(config.freq_patches * d_model, d_model) if projection else None
        self.frequency_unfold = nn.Linear(d_model, config.freq_patches * d_model) if projection else None
        self.post_init()

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_bart(
        cls,
        bart_name_or_path: str | Path,
        num_codebooks: int,
        codebook_size: int,
        use_clap: bool = True,
        clap_dim: int = 512,
        max_frames: int = 1016,
        **config_kwargs,
    ) -> "ClapArtForCaptioning":
        """Build a captioner around a pretrained BART (e.g. ``facebook/bart-base``), keeping its weights.

        The ART embeddings, CLAP projection and MCM heads are freshly initialised; every BART
        parameter (encoder layers, positions, token embeddings, decoder, LM head) is copied.
        ``config_kwargs`` go to [`ClapArtConfig`] (``mcm_prob``, ``mcm_weight``, ...).
        """
        try:
            bart = BartForConditionalGeneration.from_pretrained(str(bart_name_or_path))
        except OSError as err:
            raise FileNotFoundError(
                f"pretrained BART {str(bart_name_or_path)!r} is neither a local directory nor in the "
                f"Hugging Face cache (offline?)"
            ) from err
        config = ClapArtConfig(
            bart=bart.config.to_dict(),
            num_codebooks=num_codebooks,
            codebook_size=codebook_size,
            use_clap=use_clap,
            clap_dim=clap_dim,
            max_frames=max_frames,
            **config_kwargs,
        )
        model = cls(config)
        missing, unexpected = model.bart.load_state_dict(bart.state_dict(), strict=False)
        # Only tied copies of the shared embedding may be absent from BART's state dict.
        if unexpected or any(not key.endswith("embed_tokens.weight") and key != "lm_head.weight" for key in missing):
            raise RuntimeError(f"BART weights did not load cleanly: missing={missing}, unexpected={unexpected}")
        model.bart.tie_weights()
        logger.info("captioner built from pretrained BART %s", bart_name_or_path)
        return model

    @classmethod
    def from_enclap(cls, path: str | Path) -> "ClapArtForCaptioning":
        """Load an EnCLAP checkpoint directory (``config.json`` + ``pytorch_model.bin`` or
        ``model.safetensors``) as a captioner in eval mode whose outputs match EnCLAP's.

        See [`clapart_core.captioner.enclap.load_enclap`] for the conversion and what it refuses.
        """
        from clapart_core.captioner.enclap import load_enclap

        return load_enclap(path, cls)

    # ------------------------------------------------------------------ encoder
    @property
    def frame_offset(self) -> int:
        """Index of frame_1 in the encoder sequence (after the optional CLAP slot and ``<s>``)."""
        return 2 if self.config.use_clap else 1

    def embed_frames(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum the N per-codebook embeddings: ``[B, T, N]`` code ids -> ``[B, T, D]``."""
        frames = self.code_embeddings[0](codes[..., 0])
        for i in range(1, self.config.num_codebooks):
            frames = frames + self.code_embeddings[i](codes[..., i])
        return frames

    def group_time_steps(self, values: torch.Tensor, fill: int | bool) -> torch.Tensor:
        """Regroup flat frames into time steps: ``[B, T, ...] -> [B, ceil(T/F), F, ...]``.

        A clip whose frame count is not a multiple of F gets its last step completed with ``fill``
        (the pad id for codes, False for masks).
        """
        patches = self.config.freq_patches
        batch, frames = values.shape[:2]
        steps = -(-frames // patches)
        missing = steps * patches - frames
        if missing:
            filler = values.new_full((batch, missing, *values.shape[2:]), fill)
            values = torch.cat([values, filler], dim=1)
        return values.reshape(batch, steps, patches, *values.shape[2:])

    def embed_time_steps(self, codes: torch.Tensor) -> torch.Tensor:
        """One embedding per time step, keeping the frequency identity: ``[B, P, F, N]`` code ids -> ``[B, P, D]``.

        ``tables``: ``sum_{f,n} E_{f,n}[c]``; ``projection``: ``fold(concat_f sum_n E_n[c])``.
        """
        config = self.config
        patches, books = config.freq_patches, config.num_codebooks
        if config.frequency_embedding == "tables":
            steps = self.code_embeddings[0](codes[..., 0, 0])
            for index in range(1, patches * books):
                steps = steps + self.code_embeddings[index](codes[..., index // books, index % books])
            return steps
        per_patch = self.embed_frames(codes)  # [B, P, F, D]
        return self.frequency_fold(per_patch.flatten(start_dim=2))

    def encode(
        self,
        codes: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        clap: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the encoder on ``[CLAP slot, <s>, frame_1 … frame_T, </s>]``.

        Args:
            codes: ``[B, T, N]`` long flat code frames (both layouts); values in ``[0, K)``, or the
                mask id ``K + 1`` for MCM. Frames beyond [`ClapArtConfig.max_codes`] are dropped
                (evaluation crop: the first frames).
            frame_mask: ``[B, T]`` bool, True = valid, right-padded; None = all valid.
            clap: ``[B, E]`` CLAP embeddings (normalised here unless ``normalize_clap=False``);
                required iff ``use_clap``.

        Returns:
            hidden ``[B, S, D]`` and the encoder attention mask ``[B, S]`` bool; S = P + 2 (+1 CLAP)
            with P = T frames (flat) or ceil(T / F) time steps (time).
        """
        config = self.config
        encoder = self.bart.model.encoder
        codes = codes[:, : config.max_codes]
        batch, frames, num_codebooks = codes.shape
        if num_codebooks != config.num_codebooks:
            raise ValueError(f"codes have {num_codebooks} codebooks, the model {config.num_codebooks}")
        if frame_mask is None:
            frame_mask = torch.ones(batch, frames, dtype=torch.bool, device=codes.device)
        frame_mask = frame_mask[:, :frames].bool()
        lengths = frame_mask.sum(dim=1)  # [B]
        position = torch.arange(frames + 2, device=codes.device)  # <s>, frames, </s>
        if not torch.equal(frame_mask, position[None, 1 : frames + 1] <= lengths[:, None]):
            raise ValueError("frame_mask must mark a prefix of each row (right padding only)")

        # Padded frames read the zero pad row; they are also excluded from attention below.
        code_ids = codes.masked_fill(~frame_mask[:, :, None], config.pad_code_id)
        if config.is_time_layout:
            # From here on a "frame" is a time step: a partial last step counts (its missing patches
            # read the pad row), a step of padding only is excluded from attention like a padded frame.
            frame_embeds = self.embed_time_steps(self.group_time_steps(code_ids, config.pad_code_id))  # [B, P, D]
            frames = frame_embeds.shape[1]
            lengths = -(-lengths // config.freq_patches)
            position = torch.arange(frames + 2, device=codes.device)
        else:
            frame_embeds = self.embed_frames(code_ids)  # [B, T, D]
        special = encoder.embed_tokens(
            torch.tensor([self.bart.config.bos_token_id, self.bart.config.eos_token_id], device=codes.device)
        ).to(frame_embeds.dtype)  # [2, D]
        bos, eos = special[0], special[1]
        embeds = torch.cat([bos.expand(batch, 1, -1), frame_embeds, eos.expand(batch, 1, -1)], dim=1)
        # In a padded batch a short clip's </s> goes right after its last frame, not at the end.
        is_eos = position[None, :] == (lengths + 1)[:, None]  # [B, T + 2]
        embeds = torch.where(is_eos[:, :, None], eos, embeds)
        attention_mask = position[None, :] < (lengths + 2)[:, None]  # [B, T + 2]
        # BART's learned positions 0..T+1 (the module adds its own offset of 2 internally).
        embeds = embeds + encoder.embed_positions(embeds, position_ids=position)

        if config.use_clap:
            if clap is None:
                raise ValueError("this captioner was configured with use_clap=True but got clap=None")
            clap_in = clap.to(embeds.dtype)  # [B, E]
            if config.normalize_clap:
                clap_in = F.normalize(clap_in, dim=-1)
            clap_slot = self.clap_projection(clap_in)[:, None, :]  # [B, 1, D], no position
            embeds = torch.cat([clap_slot, embeds], dim=1)
            attention_mask = F.pad(attention_mask, (1, 0), value=True)

        hidden = encoder.layernorm_embedding(embeds)
        hidden = F.dropout(hidden, p=encoder.dropout, training=self.training)
        # Layerdrop is not applied (it is 0 in bart-base/large and in our from-scratch configs).
        layer_mask = create_bidirectional_mask(
            config=self.bart.config, inputs_embeds=hidden, attention_mask=attention_mask
        )
        for layer in encoder.layers:
            hidden = layer(hidden, layer_mask)
        return hidden, attention_mask

    # ------------------------------------------------------------------ training forward
    def mask_codes(
        self, codes: torch.Tensor, frame_mask: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Draw an MCM mask ``[B, T, N]`` for this batch with the model's ``mcm_prob``/``mcm_span``.

        In the time layout the spans are drawn over time steps (``mcm_span`` steps, independently
        per codebook) and cover every frequency patch of a masked step; the mask is returned on the
        flat frames, like the codes, and never marks padding.
        """
        config = self.config
        frame_mask = frame_mask.bool()
        if not config.is_time_layout:
            return sample_mcm_mask(frame_mask, config.num_codebooks, config.mcm_prob, config.mcm_span, generator)
        step_mask = self.group_time_steps(frame_mask, False).any(dim=2)  # [B, P]: a partial step counts
        steps = sample_mcm_mask(step_mask, config.num_codebooks, config.mcm_prob, config.mcm_span, generator)  # [B, P, N]
        frames = frame_mask.shape[1]
        return steps.repeat_interleave(config.freq_patches, dim=1)[:, :frames] & frame_mask[:, :, None]

    def forward(
        self,
        codes: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        clap: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        mcm_mask: torch.Tensor | None = None,
        loss_counts: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> ClapArtOutput:
        """Caption logits and losses.

        Args:
            codes: ``[B, T, N]`` long flat code frames (both layouts), values in ``[0, K)``.
            frame_mask: ``[B, T]`` bool, True = valid (right-padded); None = all valid.
            clap: ``[B, E]`` or None (must match ``use_clap``).
            labels: ``[B, L]`` caption ids ``<s> … </s>`` with ``-100`` at padding; the decoder input
                is ``labels`` shifted right behind ``</s>`` (BART's decoder start) unless given.
            decoder_input_ids: ``[B, L]`` explicit decoder input.
            decoder_attention_mask: ``[B, L]`` optional decoder padding mask.
            mcm_mask: ``[B, T, N]`` bool from [`mask_codes`]; masked codes are replaced by the mask id
                and the MCM loss is computed. None = no MCM (evaluation).
            loss_counts: for a slice of a larger batch (gradient accumulation): that batch's caption
                tokens ``[]`` and masked entries per codebook ``[N]``. The losses are then sums over
                this slice divided by the batch's counts, so the slices' losses (and gradients) add
                up to the whole batch's; None = means over this batch.

        Returns:
            [`ClapArtOutput`].
        """
        config = self.config
        codes = codes[:, : config.max_codes]
        frames = codes.shape[1]
        if frame_mask is not None:
            frame_mask = frame_mask[:, :frames].bool()
        encoder_codes = codes
        if mcm_mask is not None:
            mcm_mask = mcm_mask[:, :frames]
            if frame_mask is not None:
                mcm_mask = mcm_mask & frame_mask[:, :, None]
            encoder_codes = codes.masked_fill(mcm_mask, config.mask_code_id)
        hidden, attention_mask = self.encode(encoder_codes, frame_mask, clap)

        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = shift_tokens_right(
                labels, self.bart.config.pad_token_id, self.bart.config.decoder_start_token_id
            )
        if decoder_input_ids is None:
            raise ValueError("forward needs labels or decoder_input_ids")
        bart_out = self.bart(
            attention_mask=attention_mask,
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            use_cache=False,
        )
        logits = bart_out.logits  # [B, L, V]

        caption_loss = None
        if labels is not None:
            caption_loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                label_smoothing=config.label_smoothing,
                reduction="mean" if loss_counts is None else "sum",
            )
            if loss_counts is not None:
                caption_loss = caption_loss / loss_counts[0]
        mcm_loss = None
        if mcm_mask is not None:
            counts = None if loss_counts is None else loss_counts[1]
            if config.is_time_layout:
                steps = -(-frames // config.freq_patches)
                step_hidden = hidden[:, self.frame_offset : self.frame_offset + steps]  # [B, P, D]
                mcm_loss = self.mcm_loss_time(step_hidden, codes, mcm_mask, counts)
            else:
                frame_hidden = hidden[:, self.frame_offset : self.frame_offset + frames]  # [B, T, D]
                mcm_loss = self.mcm_loss(frame_hidden, codes, mcm_mask, counts)
        loss = None
        if caption_loss is not None:
            loss = caption_loss if mcm_loss is None else caption_loss + config.mcm_weight * mcm_loss
        return ClapArtOutput(
            loss=loss,
            caption_loss=caption_loss,
            mcm_loss=mcm_loss,
            logits=logits,
            encoder_last_hidden_state=hidden,
            encoder_attention_mask=attention_mask,
        )

    def mcm_loss(
        self, frame_hidden: torch.Tensor, codes: torch.Tensor, mcm_mask: torch.Tensor, counts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``sum_i 2^-(i+1) * CE(head_i(h[masked_i]), codes[masked_i, i])``.

        Each codebook's cross-entropy is the mean over *its* masked entries; a codebook with no
        masked entry in the batch contributes 0 (rather than NaN). Heads run on masked frames only,
        which saves ~85 % of the ``[B, T, K]`` logits.

        Args:
            frame_hidden: ``[B, T, D]`` final encoder states at the frame positions.
            codes: ``[B, T, N]`` original (unmasked) codes.
            mcm_mask: ``[B, T, N]`` bool.
            counts: ``[N]`` masked entries per codebook to divide each summed cross-entropy by (those
                of the whole batch when this is a slice of it); None = each codebook's own mean.
        """
        total = frame_hidden.new_zeros((), dtype=torch.float32)
        for i, (head, weight) in enumerate(zip(self.mcm_heads, mcm_codebook_weights(self.config.num_codebooks), strict=True)):
            selected = mcm_mask[..., i]
            if not bool(selected.any()):
                continue
            logits = head(frame_hidden[selected])  # [M_i, K]
            if counts is None:
                total = total + weight * F.cross_entropy(logits.float(), codes[..., i][selected])
            else:
                total = total + weight * F.cross_entropy(logits.float(), codes[..., i][selected], reduction="sum") / counts[i]
        return total

    def mcm_loss_time(
        self, step_hidden: torch.Tensor, codes: torch.Tensor, mcm_mask: torch.Tensor, counts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The time layout's MCM loss: [`mcm_loss`]'s weighted sum, where codebook i's cross-entropy
        is over its masked (time step, frequency) entries.

        A step's final state predicts all F x N codes of the step: ``projection`` unfolds it into F
        patch states (``Linear(D, F*D)``) read by the N shared heads; ``tables`` has one head per
        (frequency, codebook) on the step state. Either way the logits are ``[M, K]`` per codebook
        for its M masked entries only.

        Args:
            step_hidden: ``[B, P, D]`` final encoder states at the time-step positions.
            codes: ``[B, T, N]`` original (unmasked) flat codes.
            mcm_mask: ``[B, T, N]`` bool on the flat frames (from [`mask_codes`]).
            counts: as in [`mcm_loss`]: ``[N]`` masked flat entries per codebook, or None.
        """
        config = self.config
        patches, books = config.freq_patches, config.num_codebooks
        grouped_codes = self.group_time_steps(codes, config.pad_code_id)  # [B, P, F, N]
        grouped_mask = self.group_time_steps(mcm_mask, False)  # [B, P, F, N]; pad never masked
        patch_hidden = None
        if config.frequency_embedding == "projection":
            batch, steps, d_model = step_hidden.shape
            patch_hidden = self.frequency_unfold(step_hidden).reshape(batch, steps, patches, d_model)  # [B, P, F, D]
        total = step_hidden.new_zeros((), dtype=torch.float32)
        for i, weight in enumerate(mcm_codebook_weights(books)):
            selected = grouped_mask[..., i]  # [B, P, F]
            masked = int(selected.sum())
            if masked == 0:
                continue
            if patch_hidden is not None:
                logits = self.mcm_heads[i](patch_hidden[selected])  # [M_i, K]
                summed = F.cross_entropy(logits.float(), grouped_codes[..., i][selected], reduction="sum")
            else:
                summed = step_hidden.new_zeros((), dtype=torch.float32)
                for f in range(patches):
                    rows = selected[:, :, f]  # [B, P]
                    if bool(rows.any()):
                        logits = self.mcm_heads[f * books + i](step_hidden[rows])  # [M_if, K]
                        summed = summed + F.cross_entropy(logits.float(), grouped_codes[:, :, f, i][rows], reduction="sum")
            total = total + weight * summed / (masked if counts is None else counts[i])
        return total

    # ------------------------------------------------------------------ generation
    def generation_config_for(
        self,
        num_beams: int = 4,
        no_repeat_ngram_size: int = 3,
        max_length: int = 50,
        early_stopping: bool = True,
    ) -> GenerationConfig:
        """The paper's generation settings: beam search, no sampling, no reranking.

        The remaining settings are the official EnCLAP inference config (BART's): ``<s>`` forced
        as the first generated token, ``</s>`` forced at ``max_length``, and ``early_stopping=True``
        — transformers then ends the search as soon as ``num_beams`` hypotheses have finished,
        which can return a shorter, lower-scoring caption than a full search would; pass
        ``early_stopping=False`` for the score-bounded stopping rule.
        """
        bart_config = self.bart.config
        return GenerationConfig(
            num_beams=num_beams,
            no_repeat_ngram_size=no_repeat_ngram_size,
            max_length=max_length,
            early_stopping=early_stopping,
            do_sample=False,
            num_return_sequences=1,
            bos_token_id=bart_config.bos_token_id,
            eos_token_id=bart_config.eos_token_id,
            pad_token_id=bart_config.pad_token_id,
            decoder_start_token_id=bart_config.decoder_start_token_id,
            forced_bos_token_id=bart_config.bos_token_id,
            forced_eos_token_id=bart_config.eos_token_id,
        )

    @torch.no_grad()
    def generate_ids(
        self,
        codes: torch.Tensor,
        frame_mask: torch.Tensor | None,
        clap: torch.Tensor | None,
        num_beams: int = 4,
        no_repeat_ngram_size: int = 3,
        max_length: int = 50,
        early_stopping: bool = True,
    ) -> torch.Tensor:
        """Beam-search caption ids ``[B, <= max_length]`` (starting with the decoder start token)."""
        hidden, attention_mask = self.encode(codes, frame_mask, clap)
        config = self.generation_config_for(num_beams, no_repeat_ngram_size, max_length, early_stopping)
        return self.bart.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            attention_mask=attention_mask.long(),
            generation_config=config,
        )

    def generate_captions(
        self,
        codes: torch.Tensor,
        frame_mask: torch.Tensor | None,
        clap: torch.Tensor | None,
        tokenizer,
        num_beams: int = 4,
        no_repeat_ngram_size: int = 3,
        max_length: int = 50,
        early_stopping: bool = True,
    ) -> list[str]:
        """Caption a batch: beam ``num_beams``, no repeated ``no_repeat_ngram_size``-grams, at most
        ``max_length`` tokens, best beam only (see [`generation_config_for`]). The model is put in
        eval mode for the call and restored afterwards."""
        was_training = self.training
        self.eval()
        try:
            ids = self.generate_ids(
                codes, frame_mask, clap, num_beams, no_repeat_ngram_size, max_length, early_stopping
            )
        finally:
            self.train(was_training)
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return [text.strip() for text in texts]

    def num_parameters_by_part(self) -> dict[str, int]:
        """Parameter counts of the BART body and the ART front end (for logs)."""
        parts = {
            "bart": self.bart,
            "code_embeddings": self.code_embeddings,
            "mcm_heads": self.mcm_heads,
        }
        if self.frequency_fold is not None:
            parts["frequency_projections"] = nn.ModuleList([self.frequency_fold, self.frequency_unfold])
        if self.clap_projection is not None:
            parts["clap_projection"] = self.clap_projection
        return {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}


def small_bart_config(
    vocab_size: int,
    d_model: int,
    encoder_layers: int,
    decoder_layers: int,
    attention_heads: int,
    ffn_dim: int,
    dropout: float = 0.1,
    max_frames: int = 1016,
) -> BartConfig:
    """A from-scratch BART config with BART's special ids and enough positions for ``max_frames``."""
    return BartConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=attention_heads,
        decoder_attention_heads=attention_heads,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        dropout=dropout,
        attention_dropout=0.0,
        activation_dropout=0.0,
        # positions 0..max_frames+1 for <s>, frames, </s>; rounded up so captions fit too
        max_position_embeddings=max(max_frames + 2, 64),
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
        scale_embedding=False,
    )


# Registering the architecture lets `AutoConfig`/`AutoModel` open a saved captioner directory.
AutoConfig.register(ClapArtConfig.model_type, ClapArtConfig, exist_ok=True)
AutoModel.register(ClapArtConfig, ClapArtForCaptioning, exist_ok=True)

__all__ = [
    "ClapArtConfig",
    "ClapArtForCaptioning",
    "ClapArtOutput",
    "ClapArtPreTrainedModel",
    "FREQUENCY_EMBEDDINGS",
    "TOKEN_LAYOUTS",
    "crop_frames",
    "mcm_codebook_weights",
    "sample_mcm_mask",
    "small_bart_config",
]
