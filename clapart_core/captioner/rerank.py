"""Reranking candidate captions (params ``generate.rerank``; ``clapart caption --rerank``).

Beyond the paper, which takes the best beam. Per clip, ``generate.candidates`` captions are drawn
(nucleus sampling, seeded, or the best beams of a wider beam search), each is given

- ``loglik``: the captioner's length-normalised log-likelihood, the mean over its tokens
  (``<s>`` … ``</s>``, the decoder start excluded) of ``log p(token | audio, previous tokens)``
  in nats, from a teacher-forced pass at temperature 1 (not the sampler's warped scores);
- ``clap_cosine``: the cosine between the clip's CLAP audio embedding and the caption's CLAP text
  embedding, from the CLAP model the clap stage used;

and the candidate with the highest ``score`` is the caption:

- ``clap``:   ``score = clap_cosine``
- ``hybrid``: ``score = w * loglik + (1 - w) * clap_cosine``  (``w`` = ``generate.rerank_weight``)

the DCASE 2023 winner's formula (Wu et al., 0.3 x -normed NLL + 0.7 x audio-text cosine, the raw
values, no per-clip standardisation), docs/design-notes.md. Ties go to the earlier candidate.
Every clip is generated alone, its sampler seeded with the same seed, so a clip's candidates
depend only on its audio, the model and the seed — not on batch composition or order.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.modeling_outputs import BaseModelOutput

from clapart_core.captioner.data import CaptionExample, build_batch
from clapart_core.captioner.model import ClapArtForCaptioning
from clapart_core.pipeline.atomic import atomic_path

RERANK_MODES = ("none", "clap", "hybrid")
SAMPLING_MODES = ("beam", "nucleus")
#: the columns of a candidates file (``data/predictions/test_candidates.csv``)
CANDIDATE_COLUMNS = ("file_name", "candidate", "caption", "loglik", "clap_cosine", "score", "selected")


@dataclass(frozen=True)
class RerankSettings:
    """The ``generate`` keys of reranking (see the module docstring), plus the sampler's seed."""

    mode: str = "none"
    candidates: int = 50
    sampling: str = "nucleus"
    temperature: float = 0.5
    top_p: float = 0.95
    weight: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in RERANK_MODES:
            raise ValueError(f"rerank must be one of {', '.join(RERANK_MODES)}, got {self.mode!r}")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLING_MODES)}, got {self.sampling!r}")
        if self.mode != "none" and self.candidates < 2:
            raise ValueError(f"reranking needs at least 2 candidates per clip, got {self.candidates}")
        if not (self.temperature > 0 and 0 < self.top_p <= 1 and 0 <= self.weight <= 1):
            raise ValueError(f"temperature must be > 0, top_p in (0, 1] and the rerank weight in [0, 1], got {self.temperature}, {self.top_p}, {self.weight}")

    @classmethod
    def from_params(cls, generate: dict[str, Any], seed: int) -> RerankSettings:
        """From the params section ``generate`` and the top-level ``seed``."""
        g = generate
        return cls(g["rerank"], g["candidates"], g["sampling"], g["temperature"], g["top_p"], g["rerank_weight"], seed)

    @property
    def uses_clap(self) -> bool:
        return self.mode in ("clap", "hybrid")


@dataclass
class ClipCandidates:
    """One clip's candidates and their scores (arrays ``[C]``); ``chosen`` indexes the caption."""

    texts: list[str]
    loglik: np.ndarray
    clap_cosine: np.ndarray | None
    score: np.ndarray
    chosen: int

    @property
    def caption(self) -> str:
        return self.texts[self.chosen]


def rerank_scores(loglik: np.ndarray, clap_cosine: np.ndarray | None, mode: str, weight: float) -> np.ndarray:
    """The score each candidate is ranked by (module docstring): ``[C]`` float64."""
    if mode == "none":
        raise ValueError("rerank 'none' ranks nothing: it is plain beam search")
    if clap_cosine is None:
        raise ValueError(f"rerank {mode!r} needs the candidates' CLAP cosines")
    cosine = np.asarray(clap_cosine, dtype=np.float64)
    if mode == "clap":
        return cosine
    return weight * np.asarray(loglik, dtype=np.float64) + (1.0 - weight) * cosine


def choose(scores: np.ndarray) -> int:
    """The index of the highest score, the first one on a tie."""
    return int(np.argmax(scores))


def _generation_config(model: ClapArtForCaptioning, settings: RerankSettings, num_beams: int, no_repeat_ngram_size: int, max_length: int) -> Any:
    # the paper's config (forced <s> and </s>, no repeated n-grams), then N sequences per clip
    config = model.generation_config_for(max(num_beams, settings.candidates), no_repeat_ngram_size, max_length, early_stopping=True)
    config.num_return_sequences = settings.candidates
    if settings.sampling == "nucleus":
        # pure nucleus: top_k 0 turns off transformers' default top-50 cut
        config.update(do_sample=True, num_beams=1, early_stopping=False, temperature=settings.temperature, top_p=settings.top_p, top_k=0)
    return config


@torch.no_grad()
def candidate_ids(
    model: ClapArtForCaptioning,
    example: CaptionExample,
    settings: RerankSettings,
    *,
    num_beams: int = 4,
    no_repeat_ngram_size: int = 3,
    max_length: int = 50,
) -> torch.Tensor:
    """One clip's candidate caption ids ``[C, L]`` (decoder start first, ``</s>`` then padding);
    nucleus sampling draws from torch's RNG seeded with ``settings.seed`` (the caller's RNG state
    is restored)."""
    device = next(model.parameters()).device
    batch = build_batch([example], max_frames=model.config.max_frames, use_clap=model.config.use_clap, crop_generator=None).to(device)
    hidden, attention_mask = model.encode(batch.codes, batch.frame_mask, batch.clap)
    config = _generation_config(model, settings, num_beams, no_repeat_ngram_size, max_length)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(settings.seed)
        return model.bart.generate(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=attention_mask.long(), generation_config=config)


@torch.no_grad()
def sequence_logliks(model: ClapArtForCaptioning, example: CaptionExample, ids: torch.Tensor) -> np.ndarray:
    """Length-normalised log-likelihood of each caption of ``ids`` ``[C, L]`` (as
    :func:`candidate_ids` returns them) given the clip: ``[C]`` float64, mean nats per token over
    the tokens after the decoder start up to and including the first ``</s>``."""
    device = next(model.parameters()).device
    batch = build_batch([example], max_frames=model.config.max_frames, use_clap=model.config.use_clap, crop_generator=None).to(device)
    hidden, attention_mask = model.encode(batch.codes, batch.frame_mask, batch.clap)
    ids = ids.to(device)
    n = ids.shape[0]
    logits = model.bart(
        attention_mask=attention_mask.expand(n, -1),
        encoder_outputs=BaseModelOutput(last_hidden_state=hidden.expand(n, -1, -1)),
        decoder_input_ids=ids[:, :-1],
        use_cache=False,
    ).logits.float()  # [C, L-1, V]
    target = ids[:, 1:]
    token_logp = torch.log_softmax(logits, dim=-1).gather(-1, target[..., None])[..., 0]  # [C, L-1]
    is_eos = target == model.bart.config.eos_token_id
    valid = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) == 0  # up to and including the first </s>
    return ((token_logp * valid).sum(1) / valid.sum(1)).double().cpu().numpy()


def rerank_examples(
    model: ClapArtForCaptioning,
    tokenizer: Any,
    examples: Sequence[CaptionExample],
    settings: RerankSettings,
    *,
    audio_embeddings: Sequence[np.ndarray] | None = None,
    embed_text: Callable[[list[str]], np.ndarray] | None = None,
    num_beams: int = 4,
    no_repeat_ngram_size: int = 3,
    max_length: int = 50,
    progress: bool = True,
) -> list[ClipCandidates]:
    """Candidates, their scores and the chosen caption for every example, in input order.

    Args:
        audio_embeddings: ``[E]`` L2-normalised CLAP audio embedding per example (the clap stage's
            ``{split}.h5``), needed when ``settings.uses_clap``.
        embed_text: captions -> ``[C, E]`` L2-normalised CLAP text embeddings (the same CLAP model's
            text tower: :meth:`clapart_core.encoders.clap.ClapEncoder.embed_text`).
    """
    if settings.mode == "none":
        raise ValueError("rerank 'none' is plain beam search: use caption_examples")
    if settings.uses_clap and (audio_embeddings is None or embed_text is None):
        raise ValueError(f"rerank {settings.mode!r} needs a CLAP model (its audio embeddings and text tower)")
    if audio_embeddings is not None and len(audio_embeddings) != len(examples):
        raise ValueError(f"{len(audio_embeddings)} CLAP audio embeddings for {len(examples)} clips")
    was_training = model.training
    model.eval()
    out = []
    try:
        for i, example in enumerate(tqdm(examples, desc=f"reranking ({settings.mode})", unit="clip", disable=not progress)):
            ids = candidate_ids(model, example, settings, num_beams=num_beams, no_repeat_ngram_size=no_repeat_ngram_size, max_length=max_length)
            texts = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)]
            loglik = sequence_logliks(model, example, ids)
            cosine = None
            if audio_embeddings is not None and embed_text is not None:
                cosine = embed_text(texts).astype(np.float64) @ np.asarray(audio_embeddings[i], dtype=np.float64)
            scores = rerank_scores(loglik, cosine, settings.mode, settings.weight)
            out.append(ClipCandidates(texts, loglik, cosine, scores, choose(scores)))
    finally:
        model.train(was_training)
    return out


def write_candidates(path: Path, file_names: Sequence[str], clips: Sequence[ClipCandidates]) -> None:
    """Every candidate of every clip with its scores (:data:`CANDIDATE_COLUMNS`), one row each:
    ``candidate`` is its index, ``selected`` 1 for the caption chosen, scores with 6 decimals."""
    with atomic_path(Path(path)) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CANDIDATE_COLUMNS)
        for name, clip in zip(file_names, clips, strict=True):
            for j, text in enumerate(clip.texts):
                cosine = "" if clip.clap_cosine is None else f"{clip.clap_cosine[j]:.6f}"
                writer.writerow([name, j, text, f"{clip.loglik[j]:.6f}", cosine, f"{clip.score[j]:.6f}", int(j == clip.chosen)])
