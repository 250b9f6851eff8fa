"""The servable on ONNX Runtime: the HF fast tokenizer, then the graph embedder/onnx_export.py wrote.

Same hooks and results as the TF-Hub servable (load, warmup, embed -> EmbedBatchResult, feature sets,
truncation flags, token counts), and no TensorFlow anywhere on its import path: with the `onnx`
install extra the embedder runs without TensorFlow installed. Tokenisation reproduces the TF export's
(and sentence-transformers'): BERT WordPiece from the packaged vocab.txt, lower case, accents stripped,
clean text, CJK characters split, [CLS] ... [SEP] truncated to max_seq_length.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from embedder.feature_sets import DEFAULT, FeatureSet, served_set
from embedder.onnx_tokenizer import make_tokenizer, token_counts, tokenize
from embedder.servable import EmbedBatchResult
from embedder.servable_api import CHARS_PER_TOKEN
from embedder.settings import EmbedderSettings

log = logging.getLogger("polyhead.embedder.onnx")

OUTPUT_OF_SET = {DEFAULT: "embeddings"}  # every other set's output is named as the set
# ONNX Runtime fusions left off, by measurement: its SkipLayerNormalization kernel is slower than the
# Add + Add + LayerNormalization it replaces (INT8 +18 % texts/s without it on an AVX-512 Xeon; FP32 the
# same either way). Part of the fingerprint's identity: it moves the INT8 vectors' last bits.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def fingerprint_onnx(model_path: Path, vocab_path: Path, identity: dict) -> str:
    """Weights (the graph's initializers), vocabulary and every setting that changes the vectors, hashed.
    `identity` names the backend and precision, so FP32 and INT8 never share a fingerprint (nor with TF,
    whose fingerprint hashes TF variables)."""
    import onnx

    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    model = onnx.load(str(model_path))
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        digest.update(init.name.encode())
        digest.update(init.SerializeToString())
    digest.update(vocab_path.read_bytes())
    return "sha256:" + digest.hexdigest()[:16]


class OnnxEmbeddingServable:
    backend = "onnx"
    precisions = ("fp32", "int8")

    def __init__(self, settings: EmbedderSettings):
        self.settings = settings
        self.name = settings.model_name
        self.precision = settings.precision
        self.model_dir = Path(settings.onnx_model_dir)
        self.handle = str(self.model_dir / f"model.{self.precision}.onnx")
        self.fingerprint = ""
        self.dim = 0
        self.max_seq_length = 0
        self.feature_sets: dict[str, FeatureSet] = {}
        self._session = None
        self._tokenizer = None
        self._length_tokenizer = None  # batch_lengths' own: it runs beside the model thread's

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def load(self) -> None:
        import onnxruntime as ort

        started = time.perf_counter()
        path = self._resolve_model()
        meta = json.loads((self.model_dir / "polyhead_onnx.json").read_text())
        self.max_seq_length = int(meta["max_seq_length"])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.settings.intra_op_threads:
            options.intra_op_num_threads = self.settings.intra_op_threads
        if self.settings.inter_op_threads:
            options.inter_op_num_threads = self.settings.inter_op_threads
        if not self.settings.onnx_thread_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                             disabled_optimizers=list(DISABLED_OPTIMIZERS))
        self._tokenizer = make_tokenizer(self.model_dir / "vocab.txt")
        self._length_tokenizer = make_tokenizer(self.model_dir / "vocab.txt")
        identity = {"backend": self.backend, "precision": self.precision, "max_seq_length": self.max_seq_length,
                    "onnx_export_version": meta["onnx_export_version"],
                    "disabled_optimizers": list(DISABLED_OPTIMIZERS)}
        self.fingerprint = fingerprint_onnx(path, self.model_dir / "vocab.txt", identity)
        self.dim = int(self.embed(["polyhead"]).vectors.shape[1])
        self.feature_sets = {DEFAULT: FeatureSet(DEFAULT, self.dim, self.fingerprint)}
        outputs = {o.name for o in self._session.get_outputs()}
        for name, version in sorted(meta["feature_sets"].items()):
            if name in outputs:
                dim = int(self.embed(["polyhead"], name).vectors.shape[1])
                self.feature_sets[name] = served_set(self.fingerprint, name, dim, version)
        log.info("model loaded", extra={"handle": self.handle, "fingerprint": self.fingerprint, "dim": self.dim,
                                        "backend": self.backend, "precision": self.precision,
                                        "feature_sets": list(self.feature_sets),
                                        "load_s": round(time.perf_counter() - started, 2)})

    def warmup(self) -> None:
        for name in self.feature_sets:
            for n in (1, 2, self.settings.max_batch_size):
                self.embed([f"warm up text number {i} for the encoder" for i in range(n)], name)

    def _resolve_model(self) -> Path:
        from embedder.onnx_export import ONNX_EXPORT_VERSION, export_onnx

        path = Path(self.handle)
        meta_path = self.model_dir / "polyhead_onnx.json"
        if path.exists() and meta_path.exists():
            version = json.loads(meta_path.read_text()).get("onnx_export_version")
            # An older export still serves (its fingerprint says which it is); one we may rewrite is
            # re-exported, so an upgrade gets the current graph.
            if version == ONNX_EXPORT_VERSION or not self.settings.export_if_missing:
                return path
        elif not self.settings.export_if_missing:
            raise FileNotFoundError(f"no ONNX model at {path} (export it with "
                                    f"`python -m embedder.onnx_export {self.model_dir} --precision {self.precision}`)")

        log.info("exporting the bundled all-MiniLM-L6-v2 to ONNX (first start)",
                 extra={"path": str(path), "precision": self.precision})
        return export_onnx(self.model_dir, self.precision, max_seq_length=self.settings.max_seq_length)

    def batch_lengths(self, texts: list[str]) -> list[int]:
        """Tokens, not characters: 1,000 held-out sentences sorted by characters into batches of 32 are
        72 % real tokens and 28 % padding; sorted by tokens, 95 % real. The price: each text is tokenised
        twice (~1.3 ms per 32 sentences, a few % of their model time). Only a prefix is counted: past
        max_seq_length tokens a text costs the same, and 8 characters a token is rare."""
        prefix = self.max_seq_length * 8
        return [min(n, self.max_seq_length) * CHARS_PER_TOKEN
                for n in token_counts(self._length_tokenizer, [t[:prefix] for t in texts])]

    def embed(self, texts: list[str], feature_set: str = DEFAULT) -> EmbedBatchResult:
        ids, mask, counts = tokenize(self._tokenizer, texts, self.max_seq_length)
        output = OUTPUT_OF_SET.get(feature_set, feature_set)
        (vectors,) = self._session.run([output], {"input_ids": ids, "attention_mask": mask})
        return EmbedBatchResult(np.ascontiguousarray(vectors, dtype=np.float32), counts > self.max_seq_length,
                                np.minimum(counts, self.max_seq_length))
