"""Captioning raw audio files with a trained model directory (``clapart caption``).

A model directory from the train stage (written by :mod:`clapart_core.captioner.model_dir`, read
as untrusted data by :mod:`clapart_core.captioner.frontend`) holds, besides the BART captioner and
its tokenizer, the *front end* that produced its tokens: ``frontend.json`` (which encoder / CLAP
weights, as a checkpoint inside the directory, a hub id or a random-init spec + seed, with their
weight fingerprints, and the decode stage's crop) and ``rvq.npz`` (the codebooks actually used).
:class:`CaptionPipeline` checks every size before building anything, rebuilds that front end
without touching the network, checks the fingerprints (a different encoder would silently give
different tokens), and runs audio -> codes (+ CLAP) -> beam search.

Memory does not grow with a file's length: a file is read one stretch at a time
(:func:`clapart_core.corpus.audio.load_audio` reads only the frames asked for). Without a window
that stretch is the first :attr:`ModelLimits.read_seconds` (what the encoders saw of a clip in
training, as the decode stage crops it); with ``window`` each window of the file is read,
encoded and captioned in turn, with its timestamps. Clips shorter than one BEATs patch are
padded with silence (:func:`clapart_core.corpus.audio.pad_to_min_length`) and flagged, as the decode
stage pads them. A file that cannot be used gives an error record, and the others are captioned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clapart_core.captioner.data import CaptionExample
from clapart_core.captioner.frontend import load_frontend, local_spec
from clapart_core.captioner.generate import caption_examples
from clapart_core.captioner.model_dir import CODEBOOKS_FILE, ModelDirError, load_captioner, max_caption_length, read_config
from clapart_core.captioner.rerank import ClipCandidates, RerankSettings, rerank_examples
from clapart_core.corpus.audio import MIN_CLIP_SECONDS, AudioDecodeError, audio_info, load_audio, pad_to_min_length
from clapart_core.corpus.decoded import PCM_SCALE
from clapart_core.encoders.registry import TokenType, encoder_from_spec, token_type
from clapart_core.pipeline.storage import model_fingerprint
from clapart_core.tokens.rvq import ResidualVQ, load_codebooks

log = logging.getLogger(__name__)



def _check_fingerprint(what: str, model: torch.nn.Module, expected: str) -> None:
    got = model_fingerprint(model)
    if got != expected:
        raise ModelDirError(
            f"the {what} weights rebuilt for captioning (sha {got}) differ from those the model was trained on (sha {expected}); "
            f"point the {what} checkpoint at the file used in training"
        )


def _pcm_grid(wave: np.ndarray) -> np.ndarray:
    # the decode stage stores int16 PCM: waves are rounded to that grid so codes match
    return (np.round(wave * PCM_SCALE) / PCM_SCALE).astype(np.float32)


@dataclass(frozen=True)
class ModelLimits:
    """What a model directory allows, read from ``config.json`` and ``frontend.json`` alone (no
    model built), so that ``clapart caption`` checks its options before loading anything.

    Attributes:
        kind: the token type.
        max_length: the longest caption in tokens (the decoder's learned positions).
        model_seconds: the audio whose codes fill the captioner's ``max_frames``.
        read_seconds: how much of a file is read and encoded without ``--window``: the decode
            stage's crop recorded in training (``decode.max_seconds``), else ``model_seconds``.
        min_seconds: the shortest clip the encoder gets unpadded (one BEATs patch, 0.175 s).
    """

    kind: TokenType
    max_length: int
    model_seconds: float
    read_seconds: float
    min_seconds: float

    @property
    def max_window(self) -> float:
        """The longest ``--window``: one the captioner reads whole, within what training encoded."""
        return min(self.model_seconds, self.read_seconds)


def model_limits(model_dir: Path) -> ModelLimits:
    """:class:`ModelLimits` of ``model_dir``; raises what :func:`load_frontend` and
    :func:`clapart_core.captioner.model_dir.read_config` raise (one sentence each)."""
    front = load_frontend(model_dir)
    config = read_config(model_dir)
    kind = token_type(front["encoder_type"])
    model_seconds = kind.input_seconds(int(config.max_frames), front["encoder"]["spec"])
    read_seconds = float(front["max_seconds"]) if front["max_seconds"] is not None else model_seconds
    return ModelLimits(kind, max_caption_length(config), model_seconds, read_seconds, MIN_CLIP_SECONDS)


class AudioToCodes:
    """One stretch of audio -> ``[T, N]`` int16 codes, exactly as the features (+ tokenize) stages
    made the codes a model was trained on: the token type's encoder (:mod:`clapart_core.encoders.registry`)
    rebuilt from the model directory's front end, its weights checked against the recorded
    fingerprint, and the model's own codebooks for types whose codes come from RVQ."""

    def __init__(self, front: dict[str, Any], model_dir: Path, device: str) -> None:
        kind = token_type(front["encoder_type"])
        spec = local_spec(model_dir, front["encoder"]["spec"], hub=kind.checkpoint == "hub")
        self.encoder = encoder_from_spec(kind.name, spec, device, local_files_only=True)
        _check_fingerprint(self.encoder.kind.name, self.encoder.weights, front["encoder"]["weights_sha256"])
        self.rvq = ResidualVQ(load_codebooks(Path(model_dir) / CODEBOOKS_FILE)[0]) if self.encoder.kind.codebooks else None

    @property
    def sample_rate(self) -> int:
        return self.encoder.kind.sample_rate

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        """``[S]`` float32 at :attr:`sample_rate`, at least one patch long -> codes ``[T, N]`` int16."""
        return self.encoder.codes(wave, self.rvq)

    def file(self, path: Path) -> np.ndarray:
        """A whole audio file (any format, rate, channel count) -> codes, as decode + features (+
        tokenize) make them from the same file (no crop, no padding: see ``CaptionPipeline`` for those)."""
        return self(_pcm_grid(load_audio(path, self.sample_rate)))


@dataclass
class CaptionRecord:
    """One result of ``clapart caption``: a file (or one window of it) and its caption, or why not.

    Attributes:
        file: the path as given.
        start, end: the stretch captioned, in seconds from the file's start (None for an error
            found before any audio was read).
        caption: the caption; None when ``error`` is set.
        flags: what was done to the audio, one phrase each (``padded: …``, ``cropped: …``).
        error: one sentence saying why this file (or window) has no caption.
        reason: the machine-friendly reason of an audio error (``empty``, ``unreadable``,
            ``non_finite``, …; see :class:`clapart_core.corpus.audio.AudioDecodeError`).
        candidates: with reranking, every candidate and its scores (``caption`` is the chosen one).
    """

    file: str
    start: float | None = None
    end: float | None = None
    caption: str | None = None
    flags: list[str] = field(default_factory=list)
    error: str | None = None
    reason: str | None = None
    candidates: ClipCandidates | None = None


@dataclass
class CaptionPipeline:
    """Audio files -> captions with everything a trained model directory specifies."""

    frontend: AudioToCodes
    clap: Any | None
    model: Any
    tokenizer: Any
    device: str
    limits: ModelLimits

    @classmethod
    def from_model_dir(cls, model_dir: Path, device: str = "auto") -> CaptionPipeline:
        """Build everything ``model_dir`` describes on ``device`` (``auto``: CUDA when available).

        Every field of ``frontend.json`` and every random-model size is checked before the first
        model is built; hub ids are read from the local cache only.

        Raises:
            clapart_core.captioner.model_dir.ModelDirError: a field, path or size that is refused.
            clapart_core.encoders.spec.ModelNotFoundError: a model it names is not here.
            clapart_core.pipeline.checkpoints.CheckpointError: a checkpoint that is refused.
            ValueError: random sizes that are too large or not a model (ModelDirError is one too:
                also a rebuilt encoder whose weights differ from the recorded fingerprint).
        """
        from clapart_core.encoders.clap import clap_from_spec, random_clap_parameters
        from clapart_core.encoders.spec import check_random_size
        from clapart_core.pipeline.params import resolve_device

        model_dir = Path(model_dir)
        limits = model_limits(model_dir)
        front = load_frontend(model_dir)
        # sizes first: nothing is allocated before every random spec is known to be reasonable
        limits.kind.check_spec_size(front["encoder"]["spec"])
        if front["clap"] is not None and not front["clap"]["spec"].get("checkpoint"):
            check_random_size("CLAP", front["clap"]["spec"].get("random"), random_clap_parameters)
        device = resolve_device(device)
        frontend = AudioToCodes(front, model_dir, device)
        clap = None
        if front["clap"] is not None:
            clap = clap_from_spec(local_spec(model_dir, front["clap"]["spec"], hub=True), device, local_files_only=True)
            _check_fingerprint("clap", clap.model, front["clap"]["weights_sha256"])
        model, tokenizer = load_captioner(model_dir)
        return cls(frontend, clap, model.to(device), tokenizer, device, limits)

    # ------------------------------------------------------------------------------ one stretch
    def _example(self, path: Path, start: float, seconds: float, record: CaptionRecord) -> CaptionExample:
        """Read ``seconds`` of ``path`` from ``start`` at each rate the model needs, pad a short
        stretch (flagged on ``record``), and encode it."""
        rate = self.frontend.sample_rate
        wave = load_audio(path, rate, max_seconds=seconds, start_seconds=start)
        record.end = start + len(wave) / rate
        padded, was_padded = pad_to_min_length(wave, rate)
        if was_padded:
            record.flags.append(f"padded: {len(wave) / rate:.3f} s is shorter than {self.limits.min_seconds:.3f} s, padded with silence")
        codes = self.frontend(_pcm_grid(padded))
        emb = None
        if self.clap is not None:
            wave48 = load_audio(path, self.clap.sample_rate, max_seconds=seconds, start_seconds=start)
            wave48, _ = pad_to_min_length(wave48, self.clap.sample_rate)
            emb = self.clap.embed([_pcm_grid(wave48)], [str(path) if start == 0 else f"{path}@{start:g}"])[0]
        return CaptionExample(str(path), codes, emb, ("",))

    def _stretches(self, path: Path, window: float | None) -> Iterator[tuple[CaptionRecord, float, float]]:
        """``(record, start, seconds)`` for each stretch of ``path`` to caption; an error record
        (``seconds`` 0) for a file whose header cannot be used."""
        try:
            sr, _, frames = audio_info(path)
        except AudioDecodeError as err:
            yield CaptionRecord(str(path), error=str(err), reason=err.reason), 0.0, 0.0
            return
        duration = frames / sr
        if window is None:
            record = CaptionRecord(str(path), start=0.0)
            if duration > self.limits.read_seconds:
                record.flags.append(f"cropped: captioned from the first {self.limits.read_seconds:.2f} s of {duration:.2f} s (use --window for all of it)")
            yield record, 0.0, self.limits.read_seconds
            return
        n = max(1, -(-frames // round(window * sr)))  # windows of `window` seconds, the last one shorter
        for k in range(n):
            yield CaptionRecord(str(path), start=k * window), k * window, window

    def caption_stream(
        self,
        paths: Iterable[Path],
        *,
        window: float | None = None,
        num_beams: int = 4,
        max_length: int = 50,
        batch_size: int = 8,
        rerank: RerankSettings | None = None,
        no_repeat_ngram_size: int = 3,
    ) -> Iterator[CaptionRecord]:
        """Caption files (any format soundfile reads, any rate, any channel count), one record per
        file — or per window of ``window`` seconds — in input order, as soon as each batch of
        ``batch_size`` is captioned. Audio errors become error records; the other files go on.
        Peak memory is one stretch of audio plus a batch of codes, whatever the files' lengths.
        ``rerank`` (mode not ``none``): candidates reranked as the score stage does
        (:mod:`clapart_core.captioner.rerank`), each record keeping them."""
        if rerank is not None and rerank.mode == "none":
            rerank = None
        if rerank is not None and rerank.uses_clap and self.clap is None:
            raise ModelDirError(f"rerank {rerank.mode!r} needs a CLAP model, and this model directory has none (it was trained with model.use_clap false)")
        pending: list[tuple[CaptionRecord, CaptionExample | None]] = []

        def caption(examples: list[CaptionExample]) -> list[tuple[str, ClipCandidates | None]]:
            if rerank is None:
                texts = caption_examples(self.model, self.tokenizer, examples, num_beams=num_beams, max_length=max_length,
                                         no_repeat_ngram_size=no_repeat_ngram_size, batch_size=batch_size, progress=False)
                return [(t, None) for t in texts]
            clips = rerank_examples(
                self.model, self.tokenizer, examples, rerank,
                audio_embeddings=[ex.clap for ex in examples] if rerank.uses_clap else None,
                embed_text=self.clap.embed_text if rerank.uses_clap else None,
                num_beams=num_beams, no_repeat_ngram_size=no_repeat_ngram_size, max_length=max_length, progress=False,
            )
            return [(c.caption, c) for c in clips]

        def flush() -> Iterator[CaptionRecord]:
            examples = [ex for _, ex in pending if ex is not None]
            results = iter(caption(examples) if examples else [])
            for record, ex in pending:
                if ex is not None:
                    record.caption, record.candidates = next(results)
                yield record
            pending.clear()

        for path in paths:
            for record, start, seconds in self._stretches(Path(path), window):
                example = None
                if record.error is None:
                    try:
                        example = self._example(Path(path), start, seconds, record)
                    except AudioDecodeError as err:
                        record.error, record.reason = str(err), err.reason
                pending.append((record, example))
                if sum(ex is not None for _, ex in pending) >= batch_size:
                    yield from flush()
        yield from flush()
