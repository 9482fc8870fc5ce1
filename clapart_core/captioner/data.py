"""Joins the pipeline's artifacts into captioner examples: tokens (Parquet) + CLAP embedding
(HDF5) + reference captions (manifest), keyed by ``clip_id``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from clapart_core.pipeline.storage import RaggedReader, read_tokens
from clapart_core.captioner.training import CaptionExample


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
