"""Choose, by measurement, which MatMuls the ONNX INT8 export keeps in FP32 (embedder/onnx_export.py).

For each candidate set of FP32 projections, quantise the FP32 graph (dynamic, per-channel int8 MatMul
weights) and compare its vectors with FP32's on held-out sentences (the shared datasets' test splits,
never the parity fixtures): cosine mean and min, and in-process texts/s at batch 32 beside FP32's.
The gate (README, "Choosing INT8") is mean >= 0.995 and min >= 0.99; among the candidates that pass,
the fastest is the one to put in INT8_KEEP_FP32. Cosines are deterministic; the speeds need a quiet
machine to mean anything.

    .venv/bin/python -m scripts.bench.choose_int8_matmuls                    # ~5 min on 2 cores
    .venv/bin/python -m scripts.bench.choose_int8_matmuls --texts 300 --candidates "" down   # smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

SHARED = ROOT.parent / "shared" / "datasets"
DEFAULT_CANDIDATES = ["", "down", "0.down", "0.down,1.down", "0.down,1.down,2.down", "0.down,1.down,2.down,3.down",
                      "up,down"]


def held_out_sentences(limit: int, seed: int = 0) -> list[str]:
    """Test-split sentences of every shared dataset, shuffled (held out from anything we tuned on)."""
    texts: list[str] = []
    for path in sorted(Path(SHARED).glob("*/test.jsonl")):
        texts += [json.loads(line)["text"] for line in path.open(encoding="utf-8")]
    texts = list(dict.fromkeys(t for t in texts if t.strip()))
    if not texts:
        raise SystemExit(f"no held-out sentences under {SHARED}")
    np.random.default_rng(seed).shuffle(texts)
    return texts[:limit]


def embed_all(servable, texts: list[str], batch: int = 32) -> tuple[np.ndarray, float]:
    ordered = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # as the batcher groups them
    out = np.empty((len(texts), servable.dim), dtype=np.float32)
    started = time.perf_counter()
    for i in range(0, len(ordered), batch):
        rows = ordered[i:i + batch]
        out[rows] = servable.embed([texts[r] for r in rows]).vectors
    return out, len(texts) / (time.perf_counter() - started)


def load(model_dir: Path, precision: str, threads: int):
    from embedder.onnx_servable import OnnxEmbeddingServable
    from embedder.settings import EmbedderSettings

    servable = OnnxEmbeddingServable(EmbedderSettings(backend="onnx", precision=precision, onnx_model_dir=model_dir,
                                                      export_if_missing=False, intra_op_threads=threads))
    servable.load()
    return servable


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = auto)")
    ap.add_argument("--candidates", nargs="*", default=DEFAULT_CANDIDATES,
                    help='comma-separated projections kept FP32 ("down" = every layer, "5.down" = layer 5)')
    ap.add_argument("--alphas", nargs="*", default=["none", "0.5", "0.75"],
                    help="SmoothQuant migration strengths to try ('none': no smoothing)")
    args = ap.parse_args()
    from embedder.export import default_weights_dir, load_weights
    from embedder.onnx_export import export_onnx, model_filename, write_int8

    texts = held_out_sentences(args.texts)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        export_onnx(model_dir, "fp32")
        weights_dir = default_weights_dir()
        weights, config = load_weights(weights_dir), json.loads((weights_dir / "config.json").read_text())
        max_len = json.loads((model_dir / "polyhead_onnx.json").read_text())["max_seq_length"]
        reference, fp32_speed = embed_all(load(model_dir, "fp32", args.threads), texts)
        print(f"{len(texts)} held-out sentences; FP32 {fp32_speed:.0f} texts/s")
        print(f"{'kept FP32':<16} {'alpha':>5} {'cos mean':>9} {'cos min':>9} {'texts/s':>8} {'x FP32':>7}  gate")
        for alpha_arg in args.alphas:
            alpha = None if alpha_arg == "none" else float(alpha_arg)
            for candidate in args.candidates:
                keep = tuple(k for k in candidate.split(",") if k)
                write_int8(model_dir / model_filename("int8"), weights, config, max_len, weights_dir / "vocab.txt",
                           keep, alpha)
                vectors, speed = embed_all(load(model_dir, "int8", args.threads), texts)
                cos = np.sum(vectors * reference, axis=1)
                ok = cos.mean() >= 0.995 and cos.min() >= 0.99
                print(f"{candidate or '(none)':<16} {alpha_arg:>5} {cos.mean():>9.5f} {cos.min():>9.5f} {speed:>8.0f} "
                      f"{speed / fp32_speed:>7.2f}  {'pass' if ok else 'FAIL'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
