"""The ONNX backend's tokenizer: the HF fast tokenizer over the packaged vocabulary, truncated as the
TF export truncates. Shared by the servable and the exporter (which calibrates INT8 on token ids)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_tokenizer(vocab_path: Path):
    """BertWordPiece as all-MiniLM-L6-v2's tokenizer.json configures it; truncation is done by the caller
    (it needs each text's full token count to flag truncation)."""
    from tokenizers import BertWordPieceTokenizer

    return BertWordPieceTokenizer(str(vocab_path), clean_text=True, handle_chinese_chars=True,
                                  strip_accents=None, lowercase=True, wordpieces_prefix="##")


def token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Each text's token count ([CLS] and [SEP] included), before truncation."""
    return [len(e.ids) for e in tokenizer.encode_batch(texts)]


def tokenize(tokenizer, texts: list[str], max_seq_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids [N, S], mask [N, S], token counts before truncation [N]); S is the batch's longest, as in TF."""
    encodings = tokenizer.encode_batch(texts)
    counts = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    width = int(min(counts.max(initial=2), max_seq_length))
    ids = np.zeros((len(texts), width), dtype=np.int64)
    mask = np.zeros((len(texts), width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        seq = enc.ids
        if len(seq) > max_seq_length:
            seq = seq[: max_seq_length - 1] + seq[-1:]  # keep [SEP] last, as HF truncation does
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask, counts
