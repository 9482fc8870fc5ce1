"""Captioning raw audio files with a trained model directory (``clapart caption``).

A model directory from the train stage (written and read by :mod:`clapart_core.captioner.model_dir`)
holds, besides the BART captioner and its tokenizer, the *front end* that produced its tokens:
``frontend.json`` (which BEATs / CLAP weights, as a checkpoint path or a random-init spec + seed,
with their weight fingerprints) and ``rvq.npz`` (the codebooks actually used).
:class:`CaptionPipeline` rebuilds that front end, checks the fingerprints (a different BEATs would
silently give different tokens), and runs audio -> BEATs -> RVQ codes (+ CLAP) -> beam search.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clapart_core.captioner.data import CaptionExample
from clapart_core.captioner.generate import caption_examples
from clapart_core.captioner.model_dir import CODEBOOKS_FILE, load_captioner, read_frontend
from clapart_core.pipeline.storage import model_fingerprint
from clapart_core.tokens.rvq import ResidualVQ, load_codebooks

log = logging.getLogger(__name__)

def _check_fingerprint(what: str, model: torch.nn.Module, expected: str) -> None:
    got = model_fingerprint(model)
    if got != expected:
        raise RuntimeError(
            f"the {what} weights rebuilt for captioning (sha {got}) differ from those the model was trained on (sha {expected}); "
            f"point the {what} checkpoint at the file used in training"
        )


class AudioToCodes:
    """An audio file -> ``[T, N]`` int16 codes, exactly as the features (+ tokenize) stages made the
    codes a model was trained on: the token type's encoder (:mod:`clapart_core.encoders.registry`)
    rebuilt from the model directory's front end, its weights checked against the recorded
    fingerprint, and the model's own codebooks for types whose codes come from RVQ."""

    def __init__(self, front: dict[str, Any], model_dir: Path, device: str) -> None:
        from clapart_core.encoders.registry import encoder_from_spec

        self.encoder = encoder_from_spec(front["encoder_type"], front["encoder"]["spec"], device)
        _check_fingerprint(self.encoder.kind.name, self.encoder.weights, front["encoder"]["weights_sha256"])
        self.rvq = ResidualVQ(load_codebooks(Path(model_dir) / CODEBOOKS_FILE)[0]) if self.encoder.kind.codebooks else None

    def __call__(self, path: Path) -> np.ndarray:
        from clapart_core.corpus.audio import load_audio

        # the decode stage stores int16 PCM: round to that grid so codes match the pipeline's
        wave = (np.round(load_audio(path, self.encoder.kind.sample_rate) * 32767.0) / 32767.0).astype(np.float32)
        try:
            return self.encoder.codes(wave, self.rvq)
        except ValueError as err:  # e.g. too short for one code
            raise ValueError(f"{path}: {err}") from None


@dataclass
class CaptionPipeline:
    """Audio files -> captions with everything a trained model directory specifies."""

    tokenizer_frontend: AudioToCodes
    clap: Any | None
    model: Any
    tokenizer: Any
    device: str

    @classmethod
    def from_model_dir(cls, model_dir: Path, device: str = "auto") -> CaptionPipeline:
        from clapart_core.encoders.clap import clap_from_spec
        from clapart_core.pipeline.params import resolve_device

        device = resolve_device(device)
        front = read_frontend(model_dir)
        frontend = AudioToCodes(front, Path(model_dir), device)
        clap = None
        if front["clap"] is not None:
            clap = clap_from_spec(front["clap"]["spec"], device)
            _check_fingerprint("clap", clap.model, front["clap"]["weights_sha256"])
        model, tokenizer = load_captioner(Path(model_dir))
        return cls(frontend, clap, model.to(device), tokenizer, device)

    def caption_files(self, paths: Sequence[Path], num_beams: int = 4, max_length: int = 50) -> list[str]:
        """Caption audio files (any format soundfile reads, any rate, any channel count)."""
        from clapart_core.corpus.audio import load_audio

        examples = []
        for path in paths:
            codes = self.tokenizer_frontend(path)
            emb = None
            if self.clap is not None:
                wave48 = np.round(load_audio(path, self.clap.sample_rate) * 32767.0) / 32767.0
                emb = self.clap.embed([wave48.astype(np.float32)], [str(path)])[0]
            examples.append(CaptionExample(str(path), codes, emb, ("",)))
        return caption_examples(self.model, self.tokenizer, examples, num_beams=num_beams, max_length=max_length)
