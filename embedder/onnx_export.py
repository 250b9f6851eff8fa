"""Export all-MiniLM-L6-v2 to ONNX straight from the packaged safetensors: no torch, no TensorFlow.

The graph is written node by node with `onnx.helper`, op for op what embedder/export.py builds in
TensorFlow (BERT, mean pooling over the mask, L2 normalisation), from the same weights. It takes token
ids, not strings: tokenisation runs beside it in the HF fast tokenizer (embedder/onnx_tokenizer.py),
built from the same vocab.txt. Outputs: "embeddings" [N, 384] (the default feature set) and "all6"
[N, 2304] (embedder/feature_sets.py); ONNX Runtime computes only the outputs asked for.

INT8 is ONNX Runtime's dynamic quantisation (onnxruntime.quantization.quantize_dynamic) of the FP32
graph after SmoothQuant rescaling: MatMul weights int8 per output channel, activations quantised per
batch at run time. What stays FP32 and how hard to smooth were chosen by measurement (INT8_KEEP_FP32
below; scripts/bench/choose_int8_matmuls.py re-measures it).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from embedder.export import DEFAULT_MAX_SEQ_LENGTH, FEATURE_SET_VERSIONS, default_weights_dir, load_weights
from embedder.feature_sets import ALL6

OPSET = 17  # LayerNormalization is a standard op from 17
# Bumped whenever the graph or the tokenisation around it changes, so the fingerprint changes with it.
ONNX_EXPORT_VERSION = 2  # 2: q/k/v as one MatMul, BiasGelu, smoothing folded into V
PRECISIONS = ("fp32", "int8")
# INT8, chosen by measurement (scripts/bench/choose_int8_matmuls.py; cosine to FP32 on held-out sentences).
# BERT's activations have outlier channels (LayerNorm outputs: one channel ~30 where the median is ~0.9;
# GELU outputs of layers 0-3: one at ~20 where the median is 0.17), and a dynamic per-tensor int8 range
# fitted to them crushes every other channel: all MatMuls int8 give mean 0.992, min 0.963; keeping every
# FFN down-projection FP32 still min 0.976. SmoothQuant (calibrate_smoothing) moves the outliers into
# the weights (per input channel, an exact rescaling in FP32); with it, int8 everywhere still fails
# (alpha 0.75: mean 0.9948, min 0.982) because the first layers' down-projection inputs are the worst,
# so those stay FP32. On 2,000 held-out sentences, alpha 0.75: layers 0-2's down in FP32 mean 0.99847,
# min 0.99101; layers 0-3's mean 0.99897, min 0.99327, the margin taken: 4 of the 36 weight MatMuls FP32.
# (Export version 2 runs q, k and v as one MatMul, smoothed with one scale: 4 of 24 FP32. 300 sentences,
# alpha 0.75: layers 0-2's down FP32 mean 0.99857, min 0.99372; 0-3's mean 0.99897, min 0.99492; none
# kept FP32 fails, min 0.97714.)
INT8_KEEP_FP32: tuple[str, ...] = ("0.down", "1.down", "2.down", "3.down")
# SmoothQuant's migration strength (None: no smoothing); see calibrate_smoothing.
INT8_SMOOTH_ALPHA: float | None = 0.75
# The weight MatMuls, by projection; "qkv" is one MatMul of the three attention input projections side by
# side ([384, 1152]): one larger GEMM and, in INT8, one quantisation of its input instead of three.
PROJECTIONS: dict[str, tuple[str, ...]] = {
    "qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
    "o": ("attention.output.dense",), "up": ("intermediate.dense",), "down": ("output.dense",),
}
MS_DOMAIN = "com.microsoft"  # ONNX Runtime's own ops (BiasGelu)


def model_filename(precision: str) -> str:
    return f"model.{precision}.onnx"


def matmul_node_name(layer: int, projection: str) -> str:
    return f"layer{layer}/{projection}/MatMul"


def build_graph(weights: Mapping[str, np.ndarray], config: dict, max_seq_length: int,
                smooth: Mapping[str, np.ndarray] | None = None, expose_matmul_inputs: bool = False):
    """The FP32 ModelProto: inputs input_ids, attention_mask ([N, S] int64), outputs embeddings, all6.

    `smooth` ({MatMul node name: s [in]}) rescales that MatMul's input channels by 1/s and its weight
    rows by s (SmoothQuant): the same product in exact arithmetic, flatter activations for int8.
    `expose_matmul_inputs` adds each weight MatMul's input as an output "<node>/input" (calibration)."""
    from onnx import TensorProto, helper, numpy_helper

    n_layers = config["num_hidden_layers"]
    n_heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    eps = float(config["layer_norm_eps"])
    if max_seq_length > config["max_position_embeddings"]:
        raise ValueError(f"max_seq_length {max_seq_length} exceeds the model's {config['max_position_embeddings']}")

    smooth = {name: np.asarray(s, dtype=np.float32) for name, s in (smooth or {}).items()}
    nodes, inits, exposed = [], [], []
    counter = iter(range(1_000_000))

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(op_type: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        name = name or f"{op_type}_{next(counter)}"
        out = f"{name}:0"
        nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    f32 = lambda key: np.ascontiguousarray(weights[key], dtype=np.float32)  # noqa: E731
    # Only the first max_seq_length positions can ever be used.
    pos = const("embeddings.position_embeddings", f32("embeddings.position_embeddings.weight")[:max_seq_length])
    word = const("embeddings.word_embeddings", f32("embeddings.word_embeddings.weight"))
    type0 = const("embeddings.token_type_embeddings.0", f32("embeddings.token_type_embeddings.weight")[0])
    zero, one = const("c.zero", np.array([0], np.int64)), const("c.one_i", np.array([1], np.int64))
    axis1 = const("c.axis1", np.array([1], np.int64))
    ax2 = const("c.axis2", np.array([2], np.int64))
    axis_last = const("c.axis_last", np.array([-1], np.int64))

    def layer_norm(x: str, prefix: str) -> str:
        return op("LayerNormalization", [x, const(prefix + ".weight", f32(prefix + ".weight")),
                                         const(prefix + ".bias", f32(prefix + ".bias"))], axis=-1, epsilon=eps)

    def residual_norm(x: str, bias: str, residual: str, prefix: str) -> str:
        """LayerNorm(x + bias + residual) as plain ops: ONNX Runtime's fused SkipLayerNormalization is
        slower here (measured, INT8 +18 % texts/s without it; see OnnxEmbeddingServable.load)."""
        return layer_norm(op("Add", [residual, op("Add", [x, bias])]), prefix)

    def weight(layer: int, projection: str) -> tuple[np.ndarray, np.ndarray]:
        """([in, out], [out]) of a projection, the attention's three side by side."""
        keys = [f"encoder.layer.{layer}.{k}" for k in PROJECTIONS[projection]]
        return (np.concatenate([f32(k + ".weight").T for k in keys], axis=1),
                np.concatenate([f32(k + ".bias") for k in keys]))

    def matmul(x: str, w_t: np.ndarray, layer: int, projection: str) -> str:
        """x @ w_t, SmoothQuant-rescaled when `smooth` names it; the caller adds the bias."""
        name = matmul_node_name(layer, projection)
        if expose_matmul_inputs:
            exposed.append(helper.make_tensor_value_info(f"{name}/input", TensorProto.FLOAT, None))
            nodes.append(helper.make_node("Identity", [x], [f"{name}/input"], name=f"{name}/expose"))
        if name in smooth:
            x = op("Mul", [x, const(f"{name}/smooth_inv", (1.0 / smooth[name]).astype(np.float32))])
            w_t = w_t * smooth[name][:, None]
        return op("MatMul", [x, const(f"{name}/weight_t", np.ascontiguousarray(w_t, dtype=np.float32))], name=name)

    # Embeddings: word + position[:S] + token type 0, then LayerNorm.
    seq = op("Gather", [op("Shape", ["input_ids"]), one], axis=0)  # [1]: S
    seq = op("Reshape", [seq, const("c.shape1", np.array([1], np.int64))])
    positions = op("Slice", [pos, zero, seq, zero])
    x = op("Add", [op("Add", [op("Gather", [word, "input_ids"], axis=0), positions]), type0])
    x = layer_norm(x, "embeddings.LayerNorm")

    mask = op("Cast", ["attention_mask"], to=TensorProto.FLOAT)  # [N, S]
    mask3 = op("Unsqueeze", [mask, ax2])  # [N, S, 1]
    count = op("Max", [op("ReduceSum", [mask, axis1], keepdims=1), const("c.tiny", np.float32(1e-9))])
    l2_floor = const("c.l2_floor", np.float32(1e-12))
    # As the TF export: masked keys get float32's lowest value before the softmax.
    bias = op("Mul", [op("Sub", [const("c.one_f", np.float32(1.0)), mask]),
                      const("c.lowest", np.float32(np.finfo(np.float32).min))])
    bias = op("Unsqueeze", [bias, const("c.axis12", np.array([1, 2], np.int64))])  # [N, 1, 1, S]
    heads_shape = const("c.heads_shape", np.array([0, 0, n_heads, hidden // n_heads], np.int64))
    merged_shape = const("c.merged_shape", np.array([0, 0, hidden], np.int64))
    scale = const("c.scale", np.float32(1.0 / np.sqrt(hidden // n_heads)))
    qkv_split = const("c.qkv_split", np.array([hidden] * 3, np.int64))

    def pool(x: str) -> str:
        pooled = op("Div", [op("ReduceSum", [op("Mul", [x, mask3]), axis1], keepdims=0), count])
        sumsq = op("ReduceSum", [op("Mul", [pooled, pooled]), axis_last], keepdims=1)
        return op("Mul", [pooled, op("Reciprocal", [op("Sqrt", [op("Max", [sumsq, l2_floor])])])])

    pooled = []
    for i in range(n_layers):
        p = f"encoder.layer.{i}."
        w_qkv, b_qkv = weight(i, "qkv")
        w_o, b_o = weight(i, "o")
        s_o = smooth.pop(matmul_node_name(i, "o"), None)
        if s_o is not None:
            # The attention output is softmax-weighted rows of V, so scaling V's channels by 1/s scales
            # its channels by 1/s: SmoothQuant's rescaling folded into V, no Mul.
            w_qkv[:, 2 * hidden:] /= s_o
            b_qkv[2 * hidden:] /= s_o
            w_o = w_o * s_o[:, None]
        q, k, v = (f"layer{i}/{n}" for n in "qkv")
        qkv = op("Add", [matmul(x, w_qkv, i, "qkv"), const(p + "qkv.bias", b_qkv)])
        nodes.append(helper.make_node("Split", [qkv, qkv_split], [q, k, v], name=f"layer{i}/qkv/Split", axis=-1))
        q = op("Transpose", [op("Reshape", [q, heads_shape])], perm=[0, 2, 1, 3])
        k = op("Transpose", [op("Reshape", [k, heads_shape])], perm=[0, 2, 3, 1])
        v = op("Transpose", [op("Reshape", [v, heads_shape])], perm=[0, 2, 1, 3])
        scores = op("Add", [op("Mul", [op("MatMul", [q, k]), scale]), bias])
        ctx = op("MatMul", [op("Softmax", [scores], axis=-1), v])
        ctx = op("Reshape", [op("Transpose", [ctx], perm=[0, 2, 1, 3]), merged_shape])
        x = residual_norm(matmul(ctx, w_o, i, "o"), const(p + "o.bias", b_o), x, p + "attention.output.LayerNorm")
        w_up, b_up = weight(i, "up")
        gelu = op("BiasGelu", [matmul(x, w_up, i, "up"), const(p + "up.bias", b_up)], domain=MS_DOMAIN)
        w_down, b_down = weight(i, "down")
        x = residual_norm(matmul(gelu, w_down, i, "down"), const(p + "down.bias", b_down), x, p + "output.LayerNorm")
        pooled.append(pool(x))

    nodes.append(helper.make_node("Identity", [pooled[-1]], ["embeddings"], name="embeddings"))
    nodes.append(helper.make_node("Concat", pooled, [ALL6], name=ALL6, axis=1))
    graph = helper.make_graph(
        nodes, "all_minilm_l6_v2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", hidden]),
         helper.make_tensor_value_info(ALL6, TensorProto.FLOAT, ["batch", hidden * n_layers]), *exposed],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
                              producer_name="polyhead")
    model.ir_version = 8  # readable by every onnxruntime this project pins
    return model


def int8_nodes(n_layers: int, keep_fp32: tuple[str, ...] = INT8_KEEP_FP32) -> list[str]:
    """The weight MatMuls that INT8 quantises (attention's activation x activation MatMuls never are).
    `keep_fp32` names projections of every layer ("down") or of one layer ("5.down")."""
    unknown = {k for k in keep_fp32 if k.rpartition(".")[2] not in PROJECTIONS}
    if unknown:
        raise ValueError(f"keep_fp32: unknown projections {sorted(unknown)}; known: {', '.join(PROJECTIONS)}")
    return [matmul_node_name(i, p) for i in range(n_layers) for p in PROJECTIONS
            if p not in keep_fp32 and f"{i}.{p}" not in keep_fp32]


def quantize_int8(fp32_path: Path, int8_path: Path, n_layers: int, keep_fp32: tuple[str, ...] = INT8_KEEP_FP32) -> Path:
    """ONNX Runtime dynamic quantisation: int8 weights per output channel, uint8 activations per batch."""
    import logging

    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # its pre-processing advice
    quantize_dynamic(str(fp32_path), str(int8_path), per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"], nodes_to_quantize=int8_nodes(n_layers, keep_fp32),
                     # the fused ops' outputs have no ONNX shape inference: they are float
                     extra_options={"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT})
    return int8_path


def write_int8(int8_path: Path, weights: Mapping[str, np.ndarray], config: dict, max_seq_length: int,
               vocab_path: Path, keep_fp32: tuple[str, ...] = INT8_KEEP_FP32,
               alpha: float | None = INT8_SMOOTH_ALPHA) -> Path:
    """The INT8 model: the FP32 graph, smoothed (alpha None: not), dynamically quantised."""
    import onnx

    smooth = None
    if alpha is not None:  # only what is quantised: an FP32 MatMul gains nothing from a rescaling
        quantised = set(int8_nodes(config["num_hidden_layers"], keep_fp32))
        smooth = {name: s for name, s in calibrate_smoothing(weights, config, max_seq_length, vocab_path, alpha).items()
                  if name in quantised}
    source = int8_path.with_name(int8_path.name + ".source.onnx")
    try:
        onnx.save(build_graph(weights, config, max_seq_length, smooth=smooth), str(source))
        return quantize_int8(source, int8_path, config["num_hidden_layers"], keep_fp32)
    finally:
        source.unlink(missing_ok=True)


def export_onnx(
    output_dir: Path,
    precision: str = "fp32",
    weights_dir: Path | None = None,
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
    weights: Mapping[str, np.ndarray] | None = None,
    keep_fp32: tuple[str, ...] = INT8_KEEP_FP32,
    alpha: float | None = INT8_SMOOTH_ALPHA,
) -> Path:
    """Write `output_dir`/model.<precision>.onnx (and the FP32 graph INT8 is made from), vocab.txt and
    polyhead_onnx.json. Each file is built beside its destination and renamed into place, so a crash
    never leaves a half-written model for the next start to load. Returns the model's path."""
    import onnx

    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    weights_dir = Path(weights_dir) if weights_dir else default_weights_dir()
    config = json.loads((weights_dir / "config.json").read_text())
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    meta_path = output_dir / "polyhead_onnx.json"
    meta = {"model": "sentence-transformers/all-MiniLM-L6-v2", "source": str(weights_dir),
            "max_seq_length": max_seq_length, "onnx_export_version": ONNX_EXPORT_VERSION,
            "dim": config["hidden_size"], "layers": config["num_hidden_layers"],
            "feature_sets": FEATURE_SET_VERSIONS, "int8_keep_fp32": list(keep_fp32), "int8_smooth_alpha": alpha}
    if meta_path.exists() and json.loads(meta_path.read_text()) != meta:
        # Another length, weights or export version: the files there belong to it, not to us.
        for stale in [*output_dir.glob("model.*.onnx"), output_dir / "vocab.txt"]:
            stale.unlink(missing_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=output_dir))
    try:
        fp32 = output_dir / model_filename("fp32")
        weights = dict(weights) if weights is not None else load_weights(weights_dir)
        if not fp32.exists():
            model = build_graph(weights, config, max_seq_length)
            onnx.checker.check_model(model)
            onnx.save(model, str(staging / fp32.name))
            (staging / fp32.name).rename(fp32)
        if not (output_dir / "vocab.txt").exists():
            shutil.copyfile(weights_dir / "vocab.txt", staging / "vocab.txt")
            (staging / "vocab.txt").rename(output_dir / "vocab.txt")
        target = output_dir / model_filename(precision)
        if precision == "int8" and not target.exists():
            write_int8(staging / target.name, weights, config, max_seq_length, weights_dir / "vocab.txt",
                       keep_fp32, alpha)
            (staging / target.name).rename(target)
        (staging / meta_path.name).write_text(json.dumps(meta, indent=1))
        (staging / meta_path.name).rename(meta_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Export the bundled all-MiniLM-L6-v2 to ONNX (no torch, no TensorFlow).")
    ap.add_argument("output_dir", type=Path)
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32")
    ap.add_argument("--max-seq-length", type=int, default=DEFAULT_MAX_SEQ_LENGTH)
    args = ap.parse_args(argv)
    print(export_onnx(args.output_dir, args.precision, max_seq_length=args.max_seq_length))
    return 0



# Calibration for SmoothQuant's per-channel activation ranges: varied everyday sentences written for this
# purpose (never the datasets the gate is measured on). BERT's outlier channels are the same for every
# input, so a few hundred tokens find them.
CALIBRATION_TEXTS = (
    "How do I reset my online banking password?", "My card was charged twice for the same purchase.",
    "What's the weather going to be like in Paris tomorrow?", "Set an alarm for 6:45 am on weekdays.",
    "I absolutely loved the ending, best film I've seen all year!", "This is the worst service I have ever had.",
    "The central bank raised interest rates by a quarter point on Wednesday.", "lol that was hilarious 😂😂",
    "Scientists discovered a new species of frog in the Amazon rainforest.", "Can you transfer $500 to savings?",
    "The team won the championship after a dramatic overtime goal.", "who was the first person to walk on the moon",
    "FREE entry!! Text WIN to 80086 to claim your prize now", "Are we still meeting for lunch at noon?",
    "I feel so lonely since my best friend moved away.", "Oh great, another Monday. Just what I needed.",
    "The quarterly earnings beat analysts' expectations by 12%.", "Please cancel my subscription immediately.",
    "How many calories are in a banana?", "Translate 'good morning' into Japanese.",
    "The new smartphone features a faster chip and a better camera.", "I'm scared about the exam results tomorrow.",
    "Book a table for four at an Italian restaurant tonight.", "Why is the sky blue?",
    "Stocks fell sharply as oil prices surged overnight.", "My package hasn't arrived and it's been two weeks.",
    "What is the capital of Australia?", "You're an idiot if you believe that.",
    "The museum reopens next month after a two-year renovation.", "Remind me to call mom at 5.",
    "Café crème, naïve résumé — ça va?", "東京の天気はどうですか", "Das ist eine sehr gute Idee!",
    "¿Dónde está la estación de tren?", "I can't log in to my account, it says my PIN is blocked.",
    "The president will address the nation tonight.", "What's 15% of 240?", "ok", "thanks!!",
    "Breaking: earthquake of magnitude 6.1 strikes off the coast.",
    " ".join(["The committee reviewed the proposal in detail and decided"] * 8),
)


def calibrate_smoothing(weights: Mapping[str, np.ndarray], config: dict, max_seq_length: int, vocab_path: Path,
                        alpha: float = 0.5, texts: tuple[str, ...] = CALIBRATION_TEXTS) -> dict[str, np.ndarray]:
    """SmoothQuant scales s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) for every weight MatMul, with the
    activation ranges measured on `texts` (padding included: dynamic int8 ranges see it too)."""
    import onnxruntime as ort

    from embedder.onnx_tokenizer import make_tokenizer, tokenize

    model = build_graph(weights, config, max_seq_length, expose_matmul_inputs=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs() if o.name.endswith("/input")]
    ids, mask, _ = tokenize(make_tokenizer(vocab_path), list(texts), max_seq_length)
    x_max: dict[str, np.ndarray] = {}
    for start in range(0, len(texts), 8):
        outs = session.run(names, {"input_ids": ids[start:start + 8], "attention_mask": mask[start:start + 8]})
        for name, out in zip(names, outs):
            m = np.abs(out).reshape(-1, out.shape[-1]).max(axis=0)
            x_max[name] = np.maximum(x_max.get(name, m), m)
    scales = {}
    for layer in range(config["num_hidden_layers"]):
        for projection, keys in PROJECTIONS.items():
            name = matmul_node_name(layer, projection)
            w_max = np.max([np.abs(weights[f"encoder.layer.{layer}.{key}.weight"]).max(axis=0)  # [out, in] -> per input
                            for key in keys], axis=0)
            s = np.power(np.maximum(x_max[f"{name}/input"], 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1 - alpha)
            # On a grid of 1/8 octave: last-bit differences between CPUs' kernels in the calibration pass
            # must not change the INT8 weights, hence the fingerprint, from one build machine to the next.
            s = np.exp2(np.round(np.log2(np.clip(s, 1e-2, 1e2)) * 8) / 8)
            scales[name] = s.astype(np.float32)
    return scales


if __name__ == "__main__":
    raise SystemExit(main())
