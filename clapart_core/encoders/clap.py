"""The global CLAP audio embedding that CLAP-ART feeds to BART's first encoder slot.

Real use loads ``transformers.ClapModel`` by hub id or local directory (the paper:
``laion/clap-htsat-fused``, 48 kHz input, 512-d projection). Offline demo and tests use a small
randomly initialised ``ClapConfig`` of the same architecture (HTS-AT audio tower), so the code
path is identical and only the weights differ; ``pretrained`` records which one ran.

Clips longer than the feature extractor's 10 s window use its "fusion" truncation (four
mel views, a global one and three chunks) when the checkpoint was trained with fusion; the
chunk choice uses NumPy's global RNG inside transformers, so :meth:`ClapEncoder.embed` seeds
that RNG per clip from the clip's id and restores it afterwards — embeddings then do not depend
on batch composition or call order.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clapart_core.encoders.spec import ModelNotFoundError, checkpoint_or_random, parameters_on_meta
from clapart_core.pipeline.errors import UserError
from clapart_core.pipeline.params import merge_params

log = logging.getLogger(__name__)

# A small HTS-AT: same module types as laion/clap-htsat-*, ~1 M parameters.
RANDOM_CLAP_DEFAULTS: dict[str, Any] = {
    "projection_dim": 512,
    "audio": {
        "patch_embeds_hidden_size": 32,
        "hidden_size": 256,  # = patch_embeds_hidden_size * 2**(len(depths) - 1)
        "depths": [1, 1, 1, 1],
        "num_attention_heads": [1, 2, 4, 8],
        "enable_fusion": False,
    },
    "text": {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128, "vocab_size": 1000},
}


#: the longest text (tokens, with <s> and </s>) the CLAP text tower reads: LAION-CLAP tokenises captions to 77
CLAP_TEXT_MAX_TOKENS = 77


class ByteTextTokenizer:
    """The text tokenizer of the seeded random CLAP: UTF-8 bytes, offset past RoBERTa's special ids.

    A pretrained CLAP ships its RoBERTa tokenizer; the random one of the demo has none offline, and
    its text tower is random anyway, so any deterministic, lossless tokenizer is as good as another.
    ids: ``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2 (``ClapTextConfig``'s bos / pad / eos ids, which
    its RoBERTa position ids rely on), byte ``b`` = ``b + 3``: the tower needs ``vocab_size >= 259``.
    """

    name = "utf-8 bytes + 3 (random CLAP)"
    BOS, PAD, EOS, OFFSET = 0, 1, 2, 3

    def __init__(self, vocab_size: int, max_length: int = CLAP_TEXT_MAX_TOKENS) -> None:
        if vocab_size < 256 + self.OFFSET:
            raise ValueError(f"the random CLAP's text vocab_size {vocab_size} is below {256 + self.OFFSET}, too small for its byte-level text tokenizer")
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``texts`` -> ``input_ids`` and ``attention_mask``, ``[B, L]`` long, right-padded, truncated to ``max_length``."""
        rows = [[self.BOS, *(b + self.OFFSET for b in t.encode("utf-8")[: self.max_length - 2]), self.EOS] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.PAD, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


@dataclass
class ClapEncoder:
    """A CLAP model (audio tower, and text tower for reranking) plus its feature extractor.

    Attributes:
        model: ``transformers.ClapModel`` in eval mode.
        feature_extractor: ``ClapFeatureExtractor`` (48 kHz, 64 mel bins, 10 s window).
        name: hub id / path, or ``"random"``.
        pretrained: ``False`` for the seeded random model.
        local_files_only: the text tokenizer of a pretrained model is read from the local cache only.
    """

    model: Any
    feature_extractor: Any
    name: str
    pretrained: bool
    local_files_only: bool = False
    _text_tokenizer: Any = None

    def text_tokenizer(self) -> Any:
        """The tokenizer of the text tower, loaded on first use: the checkpoint's own (RoBERTa for
        LAION-CLAP), or :class:`ByteTextTokenizer` for the random model.

        Raises:
            ModelNotFoundError: a pretrained checkpoint without a tokenizer.
        """
        if self._text_tokenizer is None:
            if not self.pretrained:
                self._text_tokenizer = ByteTextTokenizer(int(self.model.config.text_config.vocab_size))
            else:
                from transformers import AutoTokenizer

                try:
                    self._text_tokenizer = AutoTokenizer.from_pretrained(self.name, local_files_only=self.local_files_only)
                except (OSError, ValueError) as err:
                    raise ModelNotFoundError(f"CLAP model {self.name!r} has no text tokenizer here, which reranking by CLAP needs ({err})") from None
        return self._text_tokenizer

    @property
    def text_tokenizer_name(self) -> str:
        """What tokenises captions for the text tower (recorded beside reranked predictions)."""
        return self.name if self.pretrained else ByteTextTokenizer.name

    @torch.inference_mode()
    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Embed captions with the text tower: ``B`` strings -> ``[B, E]`` float32, L2-normalised
        (so its dot product with :meth:`embed`'s output is the audio-text cosine)."""
        tokenizer = self.text_tokenizer()
        if isinstance(tokenizer, ByteTextTokenizer):
            enc = tokenizer(list(texts))
        else:
            enc = tokenizer(list(texts), padding=True, truncation=True, max_length=CLAP_TEXT_MAX_TOKENS, return_tensors="pt")
        device = next(self.model.parameters()).device
        out = self.model.get_text_features(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device))
        emb = out.pooler_output if hasattr(out, "pooler_output") else out
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def sample_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    @torch.inference_mode()
    def embed(self, waves: Sequence[np.ndarray], clip_ids: Sequence[str]) -> np.ndarray:
        """Embed clips: list of ``[S_i]`` float32 mono at 48 kHz -> ``[B, E]`` float32, L2-normalised."""
        feats, longer = [], []
        state = np.random.get_state()
        try:
            for wave, clip_id in zip(waves, clip_ids, strict=True):
                np.random.seed(zlib.crc32(clip_id.encode()))  # see module docstring
                out = self.feature_extractor(
                    np.asarray(wave, dtype=np.float32), sampling_rate=self.sample_rate, return_tensors="pt"
                )
                feats.append(out["input_features"])
                longer.append(out["is_longer"])
        finally:
            np.random.set_state(state)
        device = next(self.model.parameters()).device
        out = self.model.get_audio_features(
            input_features=torch.cat(feats).to(device), is_longer=torch.cat(longer).to(device)
        )
        # transformers >= 5 returns a ModelOutput whose pooler_output is the normalised projection
        emb = out.pooler_output if hasattr(out, "pooler_output") else out
        emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        return emb.cpu().numpy()


def _random_config(overrides: dict[str, Any] | None) -> tuple[dict[str, Any], Any]:
    """The merged overrides and the ``ClapConfig`` of a random model; ValueError naming keys the
    configs do not have (transformers would silently keep them as attributes)."""
    from transformers import ClapAudioConfig, ClapConfig, ClapTextConfig

    cfg = merge_params(RANDOM_CLAP_DEFAULTS, overrides)
    unknown = sorted(set(cfg) - set(RANDOM_CLAP_DEFAULTS))
    for part, config_cls in (("audio", ClapAudioConfig), ("text", ClapTextConfig)):
        if not isinstance(cfg[part], dict):
            raise ValueError(f"the random CLAP config's {part!r} must be a mapping, got {cfg[part]!r}")
        unknown += [f"{part}.{k}" for k in sorted(set(cfg[part]) - set(config_cls().to_dict()))]
    if unknown:
        raise ValueError(f"unknown keys in the random CLAP config: {', '.join(unknown)}")
    config = ClapConfig(
        audio_config=ClapAudioConfig(projection_dim=cfg["projection_dim"], **cfg["audio"]).to_dict(),
        text_config=ClapTextConfig(projection_dim=cfg["projection_dim"], **cfg["text"]).to_dict(),
        projection_dim=cfg["projection_dim"],
    )
    return cfg, config


def random_clap_parameters(overrides: dict[str, Any] | None = None) -> int:
    """Parameters of :func:`random_clap` with these overrides, counted on the meta device without allocating."""
    from transformers import ClapModel

    _, config = _random_config(overrides)
    return parameters_on_meta(lambda: ClapModel(config))


def random_clap(overrides: dict[str, Any] | None = None, seed: int = 0) -> ClapEncoder:
    """A seeded, randomly initialised ``ClapModel`` of the real architecture at a small size."""
    from transformers import ClapFeatureExtractor, ClapModel

    cfg, config = _random_config(overrides)
    # fork_rng keeps the caller's global torch RNG untouched while init uses the seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ClapModel(config).eval()
    fusion = bool(cfg["audio"].get("enable_fusion", False))
    fe = ClapFeatureExtractor(truncation="fusion" if fusion else "rand_trunc")
    return ClapEncoder(model, fe, "random", pretrained=False)


def load_clap(name_or_path: str, device: str | torch.device = "cpu", local_files_only: bool = False) -> ClapEncoder:
    """Load a pretrained ``ClapModel`` + feature extractor by hub id or local directory
    (``local_files_only``: a hub id only from the local Hugging Face cache, never the network)."""
    from transformers import ClapFeatureExtractor, ClapModel

    try:
        model = ClapModel.from_pretrained(name_or_path, local_files_only=local_files_only).eval().to(device)
        fe = ClapFeatureExtractor.from_pretrained(name_or_path, local_files_only=local_files_only)
    except OSError as err:
        if local_files_only:  # a model directory named it: say what is missing, advise no download of a name it chose
            raise ModelNotFoundError(f"CLAP model {name_or_path!r} is not in the local Hugging Face cache, and it is never downloaded here") from None
        raise ModelNotFoundError(
            f"CLAP model {name_or_path!r} is not available here (offline or not a model directory): "
            f"on a machine with internet run `hf download {name_or_path}` "
            "(or set clap.checkpoint to a local directory holding config.json and the weights)."
        ) from err
    return ClapEncoder(model, fe, name_or_path, pretrained=True, local_files_only=local_files_only)


def clap_from_spec(spec: dict[str, Any], device: str | torch.device = "cpu", local_files_only: bool = False) -> ClapEncoder:
    """The CLAP model a spec names (:mod:`clapart_core.encoders.spec`): ``{"checkpoint": id or dir}``
    loaded onto ``device``, or ``{"seed": s}`` (``"random"``: overrides) the seeded small model,
    which stays on the CPU; its size is checked before it is built. Used by the clap stage and by
    raw-audio captioning alike (``local_files_only``: never the network)."""
    return checkpoint_or_random(spec, lambda name: load_clap(name, device, local_files_only), random_clap, "CLAP", random_clap_parameters)


class ClapMismatchError(UserError, ValueError):
    """A CLAP model rebuilt from a spec is not the one that wrote the embeddings."""


def clap_of_embeddings(clap_file: Path, device: str | torch.device = "cpu") -> ClapEncoder:
    """The CLAP model that wrote ``clap_file`` (a ``{split}.h5`` of the clap stage), rebuilt from the
    spec in its attributes, its weights checked against the recorded fingerprint: reranking scores
    captions against those embeddings with the same model's text tower.

    Raises:
        ClapMismatchError: the rebuilt weights differ from those that wrote the file (one sentence).
    """
    from clapart_core.pipeline.storage import RaggedReader, model_fingerprint

    with RaggedReader(clap_file) as reader:
        spec, expected = json.loads(reader.attrs["spec"]), str(reader.attrs["weights_sha256"])
    encoder = clap_from_spec(spec, device)
    encoder.model.to(device)
    got = model_fingerprint(encoder.model)
    if got != expected:
        raise ClapMismatchError(f"{clap_file}: the CLAP model rebuilt from its spec (sha {got}) is not the one that wrote it (sha {expected}); rerun clap")
    return encoder
