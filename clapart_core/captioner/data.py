"""What the captioner reads: examples (tokens + CLAP + reference captions) and padded batches.

:func:`load_examples` joins the pipeline's artifacts, keyed by ``clip_id``: tokens (Parquet),
CLAP embeddings (HDF5) and reference captions (manifest). :func:`build_batch` pads examples
into one :class:`Batch` for training, validation and beam search alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from transformers import PreTrainedTokenizerBase

from clapart_core.captioner.model import IGNORE_INDEX, crop_frames
from clapart_core.captioner.text import normalize_caption
from clapart_core.pipeline.storage import RaggedReader, read_tokens


@dataclass(frozen=True)
class CaptionExample:
    """One clip as the captioner sees it.

    Attributes:
        clip_id: unique clip id.
        codes: ``[T, N]`` int codes, N codebooks per frame, values in ``[0, K)``.
        clap: ``[E]`` float32 CLAP audio embedding (normalised by the model), or None.
        captions: one or more reference captions; training uses each as a separate target.
    """

    clip_id: str
    codes: np.ndarray
    clap: np.ndarray | None
    captions: tuple[str, ...]


@dataclass
class Batch:
    """A padded model batch.

    Attributes:
        codes: ``[B, T, N]`` long (padding holds 0; ``frame_mask`` says what is real).
        frame_mask: ``[B, T]`` bool, True = valid frame.
        clap: ``[B, E]`` float32, or None when the model has no CLAP slot.
        labels: ``[B, L]`` long caption ids ``<s> … </s>``, -100 at padding; None for generation.
    """

    codes: torch.Tensor
    frame_mask: torch.Tensor
    clap: torch.Tensor | None
    labels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on ``device``."""
        return Batch(
            codes=self.codes.to(device),
            frame_mask=self.frame_mask.to(device),
            clap=None if self.clap is None else self.clap.to(device),
            labels=None if self.labels is None else self.labels.to(device),
        )

    def select(self, rows: slice) -> Batch:
        """The rows ``rows`` of the batch (its padding included: each clip is seen as in the whole batch)."""
        return Batch(
            codes=self.codes[rows],
            frame_mask=self.frame_mask[rows],
            clap=None if self.clap is None else self.clap[rows],
            labels=None if self.labels is None else self.labels[rows],
        )


def load_examples(tokens_file: Path, manifest: pa.Table, clap_file: Path | None) -> list[CaptionExample]:
    """Examples of one split, in token-file order.

    Args:
        tokens_file: ``{split}.parquet`` from the tokenize stage.
        manifest: the corpus manifest (captions per ``clip_id``).
        clap_file: ``{split}.h5`` CLAP embeddings, or ``None`` when the model does not use CLAP.
    Raises:
        KeyError: a token clip has no manifest row or CLAP embedding (artifacts out of sync).
    """
    tokens = read_tokens(tokens_file)
    captions = dict(zip(manifest.column("clip_id").to_pylist(), manifest.column("captions").to_pylist(), strict=True))
    clap = RaggedReader(clap_file) if clap_file is not None else None
    try:
        examples = []
        for clip_id, codes in zip(tokens.clip_ids, tokens.codes, strict=True):
            if clip_id not in captions:
                raise KeyError(f"{tokens_file}: clip {clip_id!r} is not in the manifest; rerun the pipeline (dvc repro)")
            emb = None
            if clap is not None:
                if clip_id not in clap:
                    raise KeyError(f"{clap_file}: no CLAP embedding for clip {clip_id!r}; rerun the clap stage")
                emb = np.asarray(clap[clip_id][0], dtype=np.float32)
            examples.append(CaptionExample(clip_id, codes, emb, tuple(captions[clip_id])))
        return examples
    finally:
        if clap is not None:
            clap.close()


def tokenize_captions(tokenizer: PreTrainedTokenizerBase, captions: Sequence[str], max_length: int) -> list[list[int]]:
    """Normalise and tokenise captions to ``<s> … </s>`` id lists (truncated to ``max_length``)."""
    encoded = tokenizer(
        [normalize_caption(c) for c in captions], truncation=True, max_length=max_length, add_special_tokens=True
    )
    return [list(ids) for ids in encoded["input_ids"]]


def build_batch(
    examples: Sequence[CaptionExample],
    *,
    max_frames: int,
    use_clap: bool,
    crop_generator: torch.Generator | None,
    caption_ids: Sequence[Sequence[int]] | None = None,
    crop_step: int = 1,
) -> Batch:
    """Pad examples into a [`Batch`].

    Args:
        examples: the clips.
        max_frames: crop length in flat code frames (the model's ``config.max_codes``, which in the
            time layout is ``max_frames`` time steps x ``freq_patches``); a random window when
            ``crop_generator`` is given (training), the first frames otherwise (evaluation).
        use_clap: whether to stack the CLAP embeddings (all examples must have one).
        crop_generator: RNG for training crops, or None.
        caption_ids: one tokenised caption (with ``<s>``/``</s>``) per example, or None.
        crop_step: training crops start at multiples of it (the tokens' ``freq_patches``: 8 for
            BEATs, 1 for EnCodec); evaluation crops start at 0 whatever it is.
    """
    clips = [
        crop_frames(torch.as_tensor(np.asarray(ex.codes), dtype=torch.long), max_frames, crop_generator, crop_step) for ex in examples
    ]
    num_codebooks = clips[0].shape[1]
    longest = max(max(clip.shape[0] for clip in clips), 1)
    codes = torch.zeros(len(clips), longest, num_codebooks, dtype=torch.long)
    frame_mask = torch.zeros(len(clips), longest, dtype=torch.bool)
    for row, clip in enumerate(clips):
        codes[row, : clip.shape[0]] = clip
        frame_mask[row, : clip.shape[0]] = True

    clap = None
    if use_clap:
        missing = [ex.clip_id for ex in examples if ex.clap is None]
        if missing:
            raise ValueError(f"use_clap=True but clips {missing[:3]} have no CLAP embedding")
        clap = torch.as_tensor(np.stack([np.asarray(ex.clap, dtype=np.float32) for ex in examples]))

    labels = None
    if caption_ids is not None:
        width = max(len(ids) for ids in caption_ids)
        labels = torch.full((len(caption_ids), width), IGNORE_INDEX, dtype=torch.long)
        for row, ids in enumerate(caption_ids):
            labels[row, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
    return Batch(codes=codes, frame_mask=frame_mask, clap=clap, labels=labels)
