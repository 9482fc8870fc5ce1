"""Captioning raw audio files with a trained model directory (``clapart caption``).

A model directory from the train stage holds, besides the BART captioner and its tokenizer,
the *front end* that produced its tokens: ``frontend.json`` (which BEATs / CLAP weights, as a
checkpoint path or a random-init spec + seed, with their weight fingerprints) and ``rvq.npz``
(the codebooks actually used). :class:`CaptionPipeline` rebuilds that front end, checks the
fingerprints (a different BEATs would silently give different tokens), and runs
audio -> BEATs -> RVQ codes (+ CLAP) -> beam search.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clapart_core.tokens.rvq import ResidualVQ, load_codebooks, save_codebooks
from clapart_core.pipeline.storage import RaggedReader, model_fingerprint

log = logging.getLogger(__name__)

FRONTEND_FILE = "frontend.json"
CODEBOOKS_FILE = "rvq.npz"


def write_frontend(model_dir: Path, tokens_meta: dict[str, Any], codebooks_file: Path, clap_file: Path | None) -> None:
    """Record the token front end next to a trained captioner.

    Args:
        model_dir: the trained model directory.
        tokens_meta: metadata of the token files the model was trained on.
        codebooks_file: the full ``rvq.npz``; its first ``num_codebooks`` layers are copied.
        clap_file: a CLAP embeddings file (its attrs name the CLAP model), or None without CLAP.
    """
    n = int(tokens_meta["num_codebooks"])
    if tokens_meta["encoder_type"] == "beats_rvq":
        codebooks, fit = load_codebooks(codebooks_file)
        save_codebooks(model_dir / CODEBOOKS_FILE, codebooks[:n], **fit)
    clap = None
    if clap_file is not None:
        with RaggedReader(clap_file) as r:
            clap = {"spec": json.loads(r.attrs["spec"]), "pretrained": bool(r.attrs["pretrained"]), "weights_sha256": r.attrs["weights_sha256"]}
    frontend = {"encoder_type": tokens_meta["encoder_type"], "encoder": tokens_meta["encoder"], "num_codebooks": n, "clap": clap}
    (model_dir / FRONTEND_FILE).write_text(json.dumps(frontend, indent=2, sort_keys=True) + "\n")


def read_frontend(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / FRONTEND_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {model_dir} was not written by the clapart train stage")
    return json.loads(path.read_text())


def _check_fingerprint(what: str, model: torch.nn.Module, expected: str) -> None:
    got = model_fingerprint(model)
    if got != expected:
        raise RuntimeError(
            f"the {what} weights rebuilt for captioning (sha {got}) differ from those the model was trained on (sha {expected}); "
            f"point the {what} checkpoint at the file used in training"
        )


class _Tokenizer:
    """Raw 16/24 kHz audio -> ``[T, N]`` codes, as the pipeline's features + tokenize stages do."""

    def __init__(self, front: dict[str, Any], model_dir: Path, device: str) -> None:
        from clapart_core.encoders.beats import load_beats, load_beats_tokenizer, random_beats, random_beats_tokenizer
        from clapart_core.encoders.encodec import encodec_from_spec

        self.type, spec, self.device = front["encoder_type"], front["encoder"]["spec"], device
        expected = front["encoder"]["weights_sha256"]
        if self.type == "beats_rvq":
            self.model = load_beats(spec["checkpoint"]) if spec["checkpoint"] else random_beats(spec["random"], seed=spec["seed"])
            self.rvq = ResidualVQ(load_codebooks(Path(model_dir) / CODEBOOKS_FILE)[0])
            self.sample_rate = 16_000
        elif self.type == "beats_tokenizer":
            self.model = load_beats_tokenizer(spec["checkpoint"]) if spec["checkpoint"] else random_beats_tokenizer(spec["random"], seed=spec["seed"])
            self.sample_rate = 16_000
        else:
            self.encodec = encodec_from_spec(spec, device)
            self.model, self.sample_rate, self.bandwidth = self.encodec.model, self.encodec.sample_rate, spec["bandwidth"]
        _check_fingerprint(self.type, self.model, expected)
        self.model = self.model.to(device).eval()

    def __call__(self, path: Path) -> np.ndarray:
        from clapart_core.corpus.audio import load_audio
        from clapart_core.encoders.beats import num_patches

        # the decode stage stores int16 PCM: round to that grid so tokens match the pipeline's
        wave = (np.round(load_audio(path, self.sample_rate) * 32767.0) / 32767.0).astype(np.float32)
        if self.type == "encodec":
            return self.encodec.encode(wave, self.bandwidth).astype(np.int16)
        n = num_patches(len(wave))
        if n == 0:
            raise ValueError(f"{path}: shorter than one BEATs patch (0.175 s), nothing to caption")
        batch = torch.from_numpy(wave)[None].to(self.device)
        if self.type == "beats_tokenizer":
            return self.model.extract_labels(batch)[0, :n, None].cpu().numpy().astype(np.int16)
        feats, _ = self.model.extract_features(batch)
        return self.rvq.encode(feats[0, :n].float().cpu()).numpy().astype(np.int16)


@dataclass
class CaptionPipeline:
    """Audio files -> captions with everything a trained model directory specifies."""

    tokenizer_frontend: _Tokenizer
    clap: Any | None
    model: Any
    tokenizer: Any
    device: str

    @classmethod
    def from_model_dir(cls, model_dir: Path, device: str = "auto") -> "CaptionPipeline":
        from clapart_core.encoders.clap import load_clap, random_clap
        from clapart_core.captioner.generate import load_captioner
        from clapart_core.pipeline.params import resolve_device

        device = resolve_device(device)
        front = read_frontend(model_dir)
        frontend = _Tokenizer(front, Path(model_dir), device)
        clap = None
        if front["clap"] is not None:
            cspec = front["clap"]["spec"]
            clap = load_clap(cspec["checkpoint"], device) if cspec["checkpoint"] else random_clap(cspec.get("random"), seed=cspec["seed"])
            _check_fingerprint("clap", clap.model, front["clap"]["weights_sha256"])
        model, tokenizer = load_captioner(Path(model_dir))
        return cls(frontend, clap, model.to(device), tokenizer, device)

    def caption_files(self, paths: Sequence[Path], num_beams: int = 4, max_length: int = 50) -> list[str]:
        """Caption audio files (any format soundfile reads, any rate, any channel count)."""
        from clapart_core.corpus.audio import load_audio
        from clapart_core.captioner.generate import caption_examples
        from clapart_core.captioner.training import CaptionExample

        examples = []
        for path in paths:
            codes = self.tokenizer_frontend(path)
            emb = None
            if self.clap is not None:
                wave48 = np.round(load_audio(path, self.clap.sample_rate) * 32767.0) / 32767.0
                emb = self.clap.embed([wave48.astype(np.float32)], [str(path)])[0]
            examples.append(CaptionExample(str(path), codes, emb, ("",)))
        return caption_examples(self.model, self.tokenizer, examples, num_beams=num_beams, max_length=max_length)
