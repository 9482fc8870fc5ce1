"""Caption text: normalisation and the caption tokenizer.

The captioner's decoder speaks BART's token protocol, so every tokenizer used here has BART's
special tokens at BART's ids: ``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2, ``<unk>`` = 3 and ``<mask>``
as the last id, and it wraps every caption as ``<s> caption </s>``. That lets a tokenizer trained
here and ``facebook/bart-base``'s own tokenizer be swapped without touching the model code.

Normalisation decision: captions keep their case and punctuation (EnCLAP trains on the raw
AudioCaps/Clotho captions with BART's case-sensitive tokenizer, and aac-metrics applies its own
PTB tokenisation and lower-casing when scoring), but whitespace is canonicalised — Unicode NFC,
runs of whitespace collapsed to one space, ends stripped — because stray double spaces or
trailing newlines in corpus files would otherwise become distinct byte-level tokens.
``decode(encode(c)) == normalize_caption(c)`` for every caption (tested).
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

#: BART's special tokens, in BART's id order; ``<mask>`` is appended after the learned vocabulary.
BOS_TOKEN, PAD_TOKEN, EOS_TOKEN, UNK_TOKEN, MASK_TOKEN = "<s>", "<pad>", "</s>", "<unk>", "<mask>"
BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

_WHITESPACE = re.compile(r"\s+")


def normalize_caption(text: str) -> str:
    """Canonical form of a caption: NFC, single spaces, no leading/trailing whitespace.

    The trained tokenizer's normalizer does exactly the same, so text normalised here and text
    normalised inside the tokenizer agree; with a pretrained (BART) tokenizer, which has no such
    normalizer, training calls this function itself.
    """
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def _build_bpe_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE pipeline: normalise -> bytes -> BPE -> ``<s> … </s>``."""
    tokenizer = Tokenizer(models.BPE(unk_token=None))  # byte-level: every byte is in the alphabet
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    )
    # add_prefix_space=False matches BART: the first word is encoded without a leading "Ġ".
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a trained `tokenizers.Tokenizer` as a transformers tokenizer with BART's specials."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        mask_token=MASK_TOKEN,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


def train_caption_tokenizer(
    captions: Iterable[str], vocab_size: int, out_dir: Path | None = None, *, pad_vocabulary: bool = False
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE caption tokenizer with BART's special-token layout.

    Args:
        captions: training captions (raw; they are normalised by the tokenizer's normalizer).
        vocab_size: upper bound on ``len(tokenizer)``, special tokens included. A small corpus can
            run out of merges first, so size the model's embedding with ``len(tokenizer)``.
        out_dir: if given, the tokenizer is written there with ``save_pretrained``.
        pad_vocabulary: fill the ids the merges did not reach with ``<reserved_ID>`` tokens, so
            that ``len(tokenizer) == vocab_size`` exactly and ``<mask>`` is ``vocab_size - 1``, as
            in BART (50265 tokens, ``<mask>`` = 50264). Encoding never produces them (no merge
            builds them); they only give a from-scratch model a pretrained tokenizer's embedding
            and LM-head size, e.g. for the full-size cost rehearsal.

    Returns:
        The tokenizer; ``tokenizer("a dog barks")["input_ids"]`` starts with 0 and ends with 2.
    """
    base_specials = [BOS_TOKEN, PAD_TOKEN, EOS_TOKEN, UNK_TOKEN]
    # 256 byte symbols + the 4 specials + <mask> must fit, or BPE has nothing to learn.
    if vocab_size < 256 + len(base_specials) + 1:
        raise ValueError(f"vocab_size={vocab_size} is below the byte-level minimum of 261")
    tokenizer = _build_bpe_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # leave the last id for <mask>
        special_tokens=base_specials,  # ids 0..3 in this order, as in BART
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    tokenizer.train_from_iterator((caption for caption in captions), trainer=trainer)
    if pad_vocabulary:
        tokenizer = _pad_bpe_vocabulary(tokenizer, vocab_size - 1)
    tokenizer.add_special_tokens([MASK_TOKEN])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        pair=f"{BOS_TOKEN} $A {EOS_TOKEN} {EOS_TOKEN} $B {EOS_TOKEN}",
        special_tokens=[(BOS_TOKEN, BOS_ID), (EOS_TOKEN, EOS_ID)],
    )
    wrapped = _wrap(tokenizer)
    check_special_token_ids(wrapped)
    logger.info("trained a byte-level BPE caption tokenizer with %d tokens", len(wrapped))
    if out_dir is not None:
        wrapped.save_pretrained(str(out_dir))
    return wrapped


def _pad_bpe_vocabulary(tokenizer: Tokenizer, size: int) -> Tokenizer:
    """``tokenizer`` with ``<reserved_ID>`` entries appended to its BPE vocabulary up to ``size`` ids.

    They go into the model's vocabulary, not the added tokens: added tokens are matched in the
    input text (49k of them would slow every call), while a vocabulary entry that no merge builds
    is simply never produced.
    """
    spec = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    for token_id in range(len(vocab), size):
        vocab[f"<reserved_{token_id}>"] = token_id
    return Tokenizer.from_str(json.dumps(spec))


def check_special_token_ids(tokenizer: PreTrainedTokenizerFast) -> None:
    """Raise if ``tokenizer`` does not use BART's special-token ids (the model depends on them)."""
    expected = {"bos": BOS_ID, "pad": PAD_ID, "eos": EOS_ID}
    found = {
        "bos": tokenizer.bos_token_id,
        "pad": tokenizer.pad_token_id,
        "eos": tokenizer.eos_token_id,
    }
    if found != expected:
        raise ValueError(f"caption tokenizer must use BART's special ids {expected}, found {found}")


def load_caption_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerFast:
    """Load a pretrained caption tokenizer (a BART hub id or a ``save_pretrained`` directory)."""
    local = Path(name_or_path)
    try:
        if (local / "tokenizer.json").is_file():
            # A saved tokenizer.json is self-describing; going through AutoTokenizer would also
            # parse the directory's config.json, whose "clapart" model type it does not know.
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(local))
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"caption tokenizer {str(name_or_path)!r} is neither a local tokenizer directory nor "
            f"available from the Hugging Face cache (offline?): {err.__class__.__name__}"
        ) from err
    check_special_token_ids(tokenizer)
    return tokenizer
