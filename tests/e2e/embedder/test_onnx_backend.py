"""The ONNX Runtime backend against the TF-Hub export, its reference: same token ids, same vectors
(FP32 cos >= 0.99999, default and all6), same truncation flags and token counts; its own fingerprint
per precision; INT8 within its quality gate on held-out sentences; the gRPC service unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedder.client import AsyncEmbedderClient
from tests.conftest import ROOT
from tests.e2e.embedder.fixtures import running_server

FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "minilm_parity.json").read_text(encoding="utf-8"))
# Where a tokenizer reimplementation drifts: nothing left after cleaning, emoji, CJK, combining marks,
# control and format characters, invisible separators, long words, texts far past max_seq_length.
HOSTILE = [
    "", " ", "\x00", "\x00\x01\x02\x1f\x7f", "\ufeff", "\u200b\u200c\u200d", "\ufffd\ufffd", "\t\n\r\x0b\x0c",
    "😀" * 40, "🏳️‍🌈 👩🏾‍💻 🤷‍♀️", "漢字" * 300, "中文，標點！「引號」、顿号", "ｶﾀｶﾅ ﾊﾝｶｸ",
    "e\u0301e\u0301e\u0301 a\u0300\u0316 n\u0303", "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇", "\u0301\u0301 leading combining",
    "x" * 99, "x" * 100, "x" * 101, "é" * 60, "ж" * 120, "a" + "\u0301" * 200,
    "word " * 2000, "A" * 10_000, "mixed\u2028line\u2029separators\x85nel",
    "\U0001d400\U0001d401 math bold 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\ue000 private use \U000f0000", "ǅ ǈ ǋ ǲ titlecase",
    "ﬀ ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ", "İIıi ẞß", "<script>alert(1)</script> ' OR 1=1 --", "% %s %n {0} ${x}",
]
TEXTS = [item["text"] for item in FIXTURE["items"]] + HOSTILE


def tf_token_ids(servable, texts):
    import tensorflow as tf

    return [[int(t) for t in row if t != 0] for row in servable._module.token_ids(tf.constant(texts)).numpy()]


def onnx_token_ids(onnx_servable, texts):
    from embedder.onnx_tokenizer import tokenize

    ids, mask, _ = tokenize(onnx_servable._tokenizer, texts, onnx_servable.max_seq_length)
    return [row[m.astype(bool)].tolist() for row, m in zip(ids, mask)]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_token_ids_equal_the_tf_exports_on_fixtures_and_hostile_strings(servable, onnx_servable):
    expected, mine = tf_token_ids(servable, TEXTS), onnx_token_ids(onnx_servable, TEXTS)
    for text, want, got in zip(TEXTS, expected, mine):
        assert got == want, f"{text[:60]!r}"
    assert max(len(r) for r in mine) == onnx_servable.max_seq_length == 128  # truncation reached


@pytest.mark.parametrize("feature_set", ["default", "all6"])
def test_fp32_vectors_match_the_tf_export(servable, onnx_servable, feature_set):
    ours = onnx_servable.embed(TEXTS, feature_set)
    reference = servable.embed(TEXTS, feature_set)
    assert ours.vectors.shape == reference.vectors.shape
    blocks = ours.vectors.shape[1] // 384  # all6: each layer's block on its own
    for b in range(blocks):
        cos = cosines(ours.vectors[:, b * 384:(b + 1) * 384], reference.vectors[:, b * 384:(b + 1) * 384])
        worst = int(np.argmin(cos))
        assert cos.min() >= 0.99999, f"block {b}: {TEXTS[worst][:60]!r} has cosine {cos[worst]:.7f}"
    assert ours.truncated.tolist() == reference.truncated.tolist()
    assert ours.token_counts.tolist() == reference.token_counts.tolist()


def test_fp32_matches_sentence_transformers_on_the_parity_fixture(onnx_servable):
    texts = [item["text"] for item in FIXTURE["items"]]
    reference = np.array([item["vector"] for item in FIXTURE["items"]], dtype=np.float32)
    assert cosines(onnx_servable.embed(texts).vectors, reference).min() >= 0.9999


def test_batch_lengths_are_the_token_counts_the_model_pads_to(onnx_servable):
    from embedder.servable_api import CHARS_PER_TOKEN

    tokens = onnx_servable.embed(TEXTS).token_counts  # after truncation: what a row is padded to
    assert onnx_servable.batch_lengths(TEXTS) == [int(n) * CHARS_PER_TOKEN for n in tokens]
    # Where characters mislead the batcher: 10,000 characters of one word are [CLS] [UNK] [SEP]; 600 CJK
    # characters are 600 tokens, capped at max_seq_length.
    assert onnx_servable.batch_lengths(["A" * 10_000, "漢字" * 300]) == [
        3 * CHARS_PER_TOKEN, onnx_servable.max_seq_length * CHARS_PER_TOKEN]


def test_vectors_do_not_depend_on_batch_company(onnx_servable):
    alone = onnx_servable.embed(["short text"]).vectors[0]
    together = onnx_servable.embed(["short text", "a much longer text " * 10]).vectors[0]
    assert float(alone @ together) > 0.99999


def test_each_backend_and_precision_has_its_own_fingerprint(servable, onnx_servable, onnx_int8_servable,
                                                            onnx_model_dir, tmp_path):
    from embedder.onnx_export import export_onnx
    from tests.e2e.embedder.fixtures import load_onnx_servable

    prints = {servable.fingerprint, onnx_servable.fingerprint, onnx_int8_servable.fingerprint}
    assert len(prints) == 3 and all(p.startswith("sha256:") for p in prints)
    assert onnx_servable.feature_sets["all6"].fingerprint == onnx_servable.fingerprint + "+all6-v1+f16"
    # Stable across re-exports: a fresh export of the same weights serves under the same fingerprint.
    export_onnx(tmp_path / "again", "fp32")
    assert load_onnx_servable(tmp_path / "again", "fp32").fingerprint == onnx_servable.fingerprint
    # ... and another max_seq_length is another model.
    export_onnx(tmp_path / "short", "fp32", max_seq_length=64)
    assert load_onnx_servable(tmp_path / "short", "fp32").fingerprint != onnx_servable.fingerprint


def test_int8_fingerprint_is_stable_across_exports(onnx_int8_servable, tmp_path):
    from embedder.onnx_export import export_onnx
    from tests.e2e.embedder.fixtures import load_onnx_servable

    export_onnx(tmp_path / "again", "int8")
    assert load_onnx_servable(tmp_path / "again", "int8").fingerprint == onnx_int8_servable.fingerprint


def test_fingerprint_changes_with_the_weights(onnx_servable, tmp_path):
    from embedder.export import default_weights_dir, load_weights
    from embedder.onnx_export import export_onnx
    from tests.e2e.embedder.fixtures import load_onnx_servable

    weights = load_weights(default_weights_dir())
    weights["encoder.layer.3.output.dense.bias"] = weights["encoder.layer.3.output.dense.bias"] + np.float32(1e-3)
    export_onnx(tmp_path / "changed", "fp32", weights=weights)
    assert load_onnx_servable(tmp_path / "changed", "fp32").fingerprint != onnx_servable.fingerprint


def test_an_older_export_serves_as_itself_and_is_replaced_where_the_embedder_may_export(onnx_model_dir, tmp_path,
                                                                                         onnx_servable):
    import shutil

    from embedder.backends import make_backend_servable
    from embedder.onnx_export import ONNX_EXPORT_VERSION
    from embedder.settings import EmbedderSettings
    from tests.e2e.embedder.fixtures import load_onnx_servable

    old = tmp_path / "old"
    old.mkdir()
    for name in ("model.fp32.onnx", "vocab.txt"):
        shutil.copyfile(onnx_model_dir / name, old / name)
    meta = json.loads((onnx_model_dir / "polyhead_onnx.json").read_text())
    (old / "polyhead_onnx.json").write_text(json.dumps({**meta, "onnx_export_version": ONNX_EXPORT_VERSION - 1}))
    # Not ours to rewrite: it serves, under a fingerprint of its own (not the current export's).
    assert load_onnx_servable(old, "fp32").fingerprint != onnx_servable.fingerprint
    upgraded = make_backend_servable(EmbedderSettings(backend="onnx", precision="fp32", onnx_model_dir=old))
    upgraded.load()
    assert json.loads((old / "polyhead_onnx.json").read_text())["onnx_export_version"] == ONNX_EXPORT_VERSION
    assert upgraded.fingerprint == onnx_servable.fingerprint


def test_thread_spinning_is_a_setting_that_changes_speed_only(onnx_model_dir, onnx_int8_servable):
    from embedder.backends import make_backend_servable
    from embedder.settings import EmbedderSettings

    spinning = make_backend_servable(EmbedderSettings(backend="onnx", precision="int8", onnx_model_dir=onnx_model_dir,
                                                      export_if_missing=False, onnx_thread_spinning=True))
    spinning.load()
    default_options = onnx_int8_servable._session.get_session_options()
    assert default_options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(RuntimeError):  # not set: ONNX Runtime's default, spinning
        spinning._session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    assert spinning.fingerprint == onnx_int8_servable.fingerprint
    texts = TEXTS[:8]
    np.testing.assert_array_equal(spinning.embed(texts).vectors, onnx_int8_servable.embed(texts).vectors)


@pytest.mark.needs_shared_datasets
def test_int8_meets_its_quality_gate_on_held_out_sentences(servable, onnx_int8_servable, shared_datasets):
    """Cosine to the TF export's vectors on test-split sentences (never the fixtures): mean >= 0.995,
    min >= 0.99 (README, "Choosing INT8")."""
    from scripts.bench.choose_int8_matmuls import embed_all, held_out_sentences

    texts = held_out_sentences(1000, seed=1)
    ours, _ = embed_all(onnx_int8_servable, texts)
    reference, _ = embed_all(servable, texts)
    cos = cosines(ours, reference)
    worst = int(np.argmin(cos))
    assert cos.mean() >= 0.995, f"mean cosine {cos.mean():.5f}"
    assert cos.min() >= 0.99, f"{texts[worst][:80]!r} has cosine {cos[worst]:.5f}"


async def test_the_grpc_service_is_the_same_on_onnx(onnx_servable):
    texts = ["How do I reset my PIN?", "what a lovely day", "Book me a table " * 80]
    async with running_server(onnx_servable) as (_, target):
        client = AsyncEmbedderClient(target)
        try:
            default = await client.embed(texts)
            all6 = await client.embed(texts, feature_set="all6")
            again = await client.embed(texts)
            info = await client.info()
        finally:
            await client.close()
    assert default.fingerprint == onnx_servable.fingerprint
    assert all6.fingerprint == onnx_servable.fingerprint + "+all6-v1+f16"
    assert all6.vectors.shape == (3, 2304)
    assert np.array_equal(all6.vectors.astype(np.float16), all6.vectors)  # served in its float16 storage
    assert np.allclose(all6.vectors[:, -384:], default.vectors, rtol=2.0 ** -11, atol=1e-6)
    assert np.allclose(default.vectors, onnx_servable.embed(texts).vectors, atol=1e-6)
    assert again.cached == [True, True, True]
    assert default.truncated == [False, False, True]
    assert info.fingerprint == onnx_servable.fingerprint
