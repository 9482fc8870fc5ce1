"""Captioning examples with the paper's beam search (stage score, ``clapart caption``).

"Generate" is text generation here; "decode" in clapart means audio decoding only.
"""

from __future__ import annotations

from collections.abc import Sequence

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from clapart_core.captioner.data import CaptionExample, build_batch
from clapart_core.captioner.model import ClapArtForCaptioning


def caption_examples(
    model: ClapArtForCaptioning,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[CaptionExample],
    *,
    num_beams: int = 4,
    max_length: int = 50,
    no_repeat_ngram_size: int = 3,
    batch_size: int = 32,
    early_stopping: bool = True,
    progress: bool = True,
) -> list[str]:
    """Caption every example (first ``max_frames`` frames), returning captions in input order.

    Examples are batched in order of length so that little padding is computed; the model's
    device is used (move the model first to generate on GPU). The keyword arguments are the
    params section ``generate:``; ``early_stopping`` as in
    [`ClapArtForCaptioning.generation_config_for`] (True = the official EnCLAP setting).
    ``progress``: a tqdm bar on stderr (off for ``clapart caption``, which calls this per batch).
    """
    device = next(model.parameters()).device
    max_frames = model.config.max_codes  # flat code frames, whatever the token layout
    order = sorted(range(len(examples)), key=lambda i: min(len(examples[i].codes), max_frames))
    captions: list[str | None] = [None] * len(examples)
    with tqdm(total=len(examples), desc="captioning", unit="clip", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = build_batch(
                [examples[i] for i in chunk],
                max_frames=max_frames,
                use_clap=model.config.use_clap,
                crop_generator=None,
            ).to(device)
            texts = model.generate_captions(
                batch.codes,
                batch.frame_mask,
                batch.clap,
                tokenizer,
                num_beams=num_beams,
                no_repeat_ngram_size=no_repeat_ngram_size,
                max_length=max_length,
                early_stopping=early_stopping,
            )
            for i, text in zip(chunk, texts, strict=True):
                captions[i] = text
            bar.update(len(chunk))
    return [c if c is not None else "" for c in captions]
