"""Heads and feature sets on the fake embedder: training records the set, serving embeds with the
artifact's set and refuses an embedder without it, old artifacts mean "default", packed /classify
sends one Embed per set, the coalescer never mixes sets."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import get_args

import numpy as np
import pytest
import pytest_asyncio
import yaml

from embedder.feature_sets import AUTO, KNOWN
from heads.coalescing import CoalescingEmbedder
from heads.config import HeadConfig, HeadConfigError, load_head_config
from heads.settings import HeadSettings
from tests.unit.conftest import (
    HEAD,
    HEAD_CONFIGS,
    TrainedHead,
    asgi_client,
    embedder_calls,
    head_app,
    running_embedder,
    train_in_process,
)

ALL6_HEAD = "support-routing-all6"
TEXTS = ["I was charged twice for my subscription", "the app crashes when I open settings"]


def write_config(folder: Path, name: str, **fields) -> Path:
    """The demo head's config under another name, its dataset paths made absolute."""
    config = load_head_config(HEAD_CONFIGS / f"{HEAD}.yaml")
    raw = config.model_dump(mode="json", exclude_defaults=True)
    raw["dataset"] = {k: str(config.resolve(Path(v))) for k, v in raw["dataset"].items()}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**raw, "name": name, **fields}))
    return path


@pytest_asyncio.fixture(scope="session")
async def all6_head(embedder, tmp_path_factory) -> TrainedHead:
    tmp = tmp_path_factory.mktemp("all6")
    config = write_config(tmp / "configs", ALL6_HEAD, feature_set="all6")
    report = await asyncio.to_thread(train_in_process, config, tmp / "models", embedder.target)
    manifest = json.loads((report.path / "manifest.json").read_text())
    return TrainedHead(config, tmp / "models", report.version, manifest["labels"], manifest["embedder_fingerprint"])


def test_the_config_defaults_to_auto_and_accepts_only_known_sets(tmp_path):
    assert get_args(HeadConfig.model_fields["feature_set"].annotation) == (AUTO, *KNOWN)
    assert load_head_config(HEAD_CONFIGS / f"{HEAD}.yaml").feature_set == "auto"
    with pytest.raises(HeadConfigError, match=r"feature_set: Input should be 'auto', 'default' or 'all6'"):
        load_head_config(write_config(tmp_path, "typo", feature_set="all-6"))


def test_training_records_the_set_and_its_fingerprint(all6_head, embedder, trained_head):
    manifest = json.loads((all6_head.models_dir / ALL6_HEAD / all6_head.version / "manifest.json").read_text())
    assert manifest["feature_set"] == "all6"
    assert manifest["embedder_fingerprint"] == embedder.model.feature_sets["all6"].fingerprint
    default = json.loads((trained_head.models_dir / HEAD / trained_head.version / "manifest.json").read_text())
    assert default["feature_set"] == "default" and default["embedder_fingerprint"] == embedder.model.fingerprint
    weights = np.load(all6_head.models_dir / ALL6_HEAD / all6_head.version / "weights.npz")
    assert 2304 in {dim for a in weights.values() for dim in a.shape}  # fitted on 2,304-d vectors


async def test_an_all6_head_embeds_all6_and_says_so(all6_head, embedder, tmp_path):
    async with asgi_client(head_app(all6_head, embedder.target, tmp_path)) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["fingerprint"] == "match", ready.text
        reply = await client.post("/predict", json={"texts": TEXTS})
        assert reply.status_code == 200, reply.text
        assert reply.json()["embedder_fingerprint"] == embedder.model.feature_sets["all6"].fingerprint
        assert [p["label"] for p in reply.json()["predictions"]] == ["billing", "technical"]
        info = (await client.get("/info")).json()
        assert info["feature_set"] == "all6"
        explained = await client.post("/explain", json={"text": TEXTS[0]})
        assert explained.status_code == 200, explained.text


async def test_an_all6_head_refuses_an_embedder_without_all6_as_a_mismatch(all6_head, tmp_path):
    async with running_embedder(model_handle="fake://?feature_sets=default") as old:
        assert old.model.fingerprint == all6_head.fingerprint.split("+")[0]  # same model, no all6
        async with asgi_client(head_app(all6_head, old.target, tmp_path)) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["fingerprint"] == (
                f"mismatch: artifact {all6_head.version} was trained on feature set 'all6', "
                f"the embedder serves only default")
            reply = await client.post("/predict", json={"text": "my card was declined"})
            assert reply.status_code == 503 and "Retry-After" in reply.headers
            assert "feature set 'all6'" in reply.json()["error"]["message"]
            assert (await client.post("/explain", json={"text": "my card was declined"})).status_code == 503


async def test_an_all6_head_refuses_another_models_all6(all6_head, tmp_path):
    async with running_embedder(model_handle="fake://?seed=1") as other:
        async with asgi_client(head_app(all6_head, other.target, tmp_path)) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert other.model.feature_sets["all6"].fingerprint in ready.json()["checks"]["fingerprint"]
            reply = await client.post("/predict", json={"text": "my card was declined"})
            assert reply.status_code == 503 and all6_head.fingerprint in reply.json()["error"]["message"]


async def test_an_artifact_without_a_feature_set_is_served_default(trained_head, embedder, tmp_path):
    """Artifacts written before feature sets have no feature_set in their manifest: "default"."""
    models = tmp_path / "models"
    shutil.copytree(trained_head.models_dir, models)
    manifest_path = models / HEAD / trained_head.version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["feature_set"]
    manifest_path.write_text(json.dumps(manifest))
    async with asgi_client(head_app(trained_head, embedder.target, tmp_path, models_dir=models)) as client:
        assert (await client.get("/readyz")).status_code == 200
        reply = await client.post("/predict", json={"texts": TEXTS})
        assert reply.status_code == 200 and reply.json()["embedder_fingerprint"] == embedder.model.fingerprint
        assert (await client.get("/info")).json()["feature_set"] == "default"


async def test_packed_classify_sends_one_embed_per_feature_set(all6_head, trained_head, embedder, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(trained_head.models_dir, models)
    shutil.copytree(all6_head.models_dir / ALL6_HEAD, models / ALL6_HEAD)
    configs = [trained_head.config, all6_head.config, write_config(tmp_path / "more", "also-default")]
    shutil.copytree(models / HEAD, models / "also-default")
    from heads.http_server import create_app

    def packed_app(target: str):
        return create_app(HeadSettings(config=configs, models_dir=models, embedder_target=target, port=0,
                                       db_url=f"sqlite:///{tmp_path / 'inference.db'}", spool_dir=tmp_path / "spool",
                                       version_poll_s=0, readiness_ttl_s=0, embedder_timeout_s=5))

    async with running_embedder(model_handle="fake://?feature_sets=default") as old:  # same model, no all6
        async with asgi_client(packed_app(old.target)) as client:
            reply = await client.post("/classify", json={"texts": TEXTS, "models": [HEAD, ALL6_HEAD]})
            results = reply.json()["results"]
            assert "predictions" in results[HEAD]  # the default head still answers
            assert results[ALL6_HEAD]["status"] == 503
            assert "feature set 'all6'" in results[ALL6_HEAD]["error"]["message"]
            assert (await client.get(f"/heads/{ALL6_HEAD}/readyz")).status_code == 503

    async with asgi_client(packed_app(embedder.target)) as client:
        texts = [f"{t} (packed {i})" for i, t in enumerate(TEXTS)]  # new texts: every Embed reaches the model
        before = embedder_calls("Embed")
        reply = await client.post("/classify", json={"texts": texts, "models": [HEAD, ALL6_HEAD, "also-default"]})
        assert reply.status_code == 200, reply.text
        assert embedder_calls("Embed") - before == 2  # default (two heads) + all6
        results = reply.json()["results"]
        assert set(results) == {HEAD, ALL6_HEAD, "also-default"}
        for name, r in results.items():
            assert [p["label"] for p in r["predictions"]] == ["billing", "technical"], (name, r)
        assert results[ALL6_HEAD]["embedder_fingerprint"] == embedder.model.feature_sets["all6"].fingerprint
        assert results[HEAD]["embedder_fingerprint"] == embedder.model.fingerprint


class RecordingClient:
    def __init__(self):
        self.calls: list[tuple[str, list[str]]] = []

    async def embed(self, texts, *, request_id=None, feature_set="default", **_):
        self.calls.append((feature_set, list(texts)))
        await asyncio.sleep(0.01)
        dim = 12 if feature_set == "all6" else 2
        return SimpleNamespace(vectors=np.ones((len(texts), dim), np.float32), cached=[False] * len(texts),
                               truncated=[False] * len(texts), fingerprint=feature_set, model="m",
                               token_counts=[1] * len(texts))

    async def close(self):
        pass


async def test_the_coalescer_merges_callers_of_one_set_only():
    client = RecordingClient()
    coalescer = CoalescingEmbedder(client, max_inflight=1)
    sets = ["default", "all6", "default", "all6", "default"]
    outs = await asyncio.gather(*(coalescer.embed([f"t{i}"], feature_set=fs) for i, fs in enumerate(sets)))
    for fs, out in zip(sets, outs):
        assert out.fingerprint == fs and out.vectors.shape == (1, 12 if fs == "all6" else 2)
    # One slot: the oldest caller's set goes first with every caller of that set, then the other set.
    assert client.calls == [("default", ["t0", "t2", "t4"]), ("all6", ["t1", "t3"])]


async def test_batch_direct_embeds_with_the_artifacts_set_and_refuses_an_embedder_without_it(all6_head, embedder,
                                                                                            tmp_path):
    from cli.batch import DirectPredictor, classify_file

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    predictor = DirectPredictor(embedder.target, all6_head.models_dir, all6_head.config)
    try:
        await classify_file(predictor, source, tmp_path / "out.jsonl")
    finally:
        await predictor.aclose()
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == ["billing", "technical"]
    async with running_embedder(model_handle="fake://?feature_sets=default") as old:
        predictor = DirectPredictor(old.target, all6_head.models_dir, all6_head.config)
        try:
            with pytest.raises(RuntimeError, match="feature set 'all6'"):
                await classify_file(predictor, source, tmp_path / "refused.jsonl")
        finally:
            await predictor.aclose()


def test_auto_compares_every_served_set_and_the_artifact_names_the_chosen_one(trained_head, embedder):
    version = trained_head.models_dir / HEAD / trained_head.version
    manifest = json.loads((version / "manifest.json").read_text())
    metrics = json.loads((version / "metrics.json").read_text())
    selection = metrics["selection"]
    assert selection["feature_sets"] == ["default", "all6"]  # the demo config says nothing: auto
    assert {c["feature_set"] for c in selection["candidates"]} == {"default", "all6"}
    chosen = selection["chosen"]["feature_set"]
    assert manifest["feature_set"] == metrics["feature_set"] == chosen
    assert manifest["embedder_fingerprint"] == embedder.model.feature_sets[chosen].fingerprint
    assert selection["why"] and selection["source"] == "cv"


async def test_auto_trains_on_the_sets_the_embedder_serves(tmp_path):
    async with running_embedder(model_handle="fake://?feature_sets=default") as old:
        config = write_config(tmp_path / "configs", "auto-old", feature_set="auto")
        report = await asyncio.to_thread(train_in_process, config, tmp_path / "models", old.target)
    assert report.metrics["feature_set"] == "default" and "feature_sets" not in report.metrics["selection"]
    assert {c["feature_set"] for c in report.metrics["selection"]["candidates"]} == {"default"}
