"""Drift end to end on real data: a CLINC150 banking head (real embedder, real head and gateway
processes) stays quiet on its own test split and flags news articles (AG News)."""

from __future__ import annotations

import json
import random
import shutil

import httpx
import pytest
import yaml

from tests.e2e.gateway.test_gateway import start_gateway, stop
from tests.e2e.heads.fixtures import ADMIN, head_process, train, wait_ready

pytestmark = pytest.mark.timeout(600)

PER_CLASS = {"train": 30, "val": 10, "test": 20}  # 15 intents: 450 / 150 / 300 texts


def sample(path, per_class: int | None = None, n: int | None = None, seed: int = 0) -> list[dict]:
    rows = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    random.Random(seed).shuffle(rows)
    if n is not None:
        return rows[:n]
    taken: dict[str, int] = {}
    out = []
    for row in rows:
        if taken.get(row["label"], 0) < per_class:
            taken[row["label"]] = taken.get(row["label"], 0) + 1
            out.append(row)
    return out


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows))


def predict_all(url: str, texts: list[str], batch: int = 50) -> None:
    for s in range(0, len(texts), batch):
        r = httpx.post(url + "/predict", json={"texts": texts[s:s + batch]}, timeout=60)
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def banking_head(shared_datasets, server_process, tmp_path_factory):
    """A head trained on a small sample of CLINC150's banking domain; the texts it will be fed."""
    _, target = server_process
    root = tmp_path_factory.mktemp("drift")
    configs, models = root / "configs", root / "models"
    configs.mkdir()
    banking = shared_datasets / "clinc150" / "domains" / "banking"
    for split, per_class in PER_CLASS.items():
        write_jsonl(configs / f"banking_{split}.jsonl", sample(banking / f"{split}.jsonl", per_class))
    config = configs / "banking.yaml"
    config.write_text(yaml.safe_dump({
        "name": "banking", "description": "CLINC150 banking intents (drift test head)",
        "dataset": {split: f"banking_{split}.jsonl" for split in PER_CLASS},
        # the defaults of every threshold; a smaller window only to keep the test short
        "drift": {"window": 500, "min_window": 200}}))
    report = train(config, models, target)
    own = [json.loads(line)["text"] for line in (configs / "banking_test.jsonl").open()]
    news = [r["text"] for r in sample(shared_datasets / "ag_news_small" / "test.jsonl", n=250)]
    return {"root": root, "config": config, "models": models, "target": target, "report": report,
            "own": own, "news": news}


def test_artifact_records_the_training_side_of_drift(banking_head):
    path = banking_head["report"].path
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and (path / "drift.npz").exists()
    # the confidence reference is held out: out-of-fold predictions (the val split joins the CV folds)
    assert manifest["drift"] == {"file": "drift.npz", "confidence_source": "cv", "n_train": 600,
                                 "n_confidence": 600}


def test_own_test_split_is_quiet_and_news_articles_flag_the_head(banking_head):
    h = banking_head
    log = h["root"] / "head.log"
    db = f"sqlite:///{h['root'] / 'inference.db'}"
    with head_process(h["config"], h["models"], h["target"], db_url=db, spool_dir=h["root"] / "spool",
                      log=log) as (_, url):
        wait_ready(url)
        before = httpx.get(url + "/drift").json()
        assert before["available"] and before["window"] == 0 and not before["flagged"]
        assert before["reference"]["ood_rate"] == 0.01 and 0.5 < before["reference"]["confidence_mean"] <= 1

        predict_all(url, h["own"])  # 300 held-out banking texts
        own = httpx.get(url + "/drift").json()
        assert own["window"] == 300 and own["window"] >= own["min_window"]
        assert not own["flagged"], own
        scores = own["scores"]
        assert scores["ood_rate"] < 0.1 and abs(scores["confidence_shift"]) < 0.1 and scores["label_shift_js"] < 0.15
        info = httpx.get(url + "/info").json()
        assert info["drift"]["flagged"] is False and info["drift"]["scores"] == own["scores"]

        routes = h["root"] / "routes.yaml"
        routes.write_text(yaml.safe_dump({"banking": url}))
        gateway, gw = start_gateway(h["config"].parent, routes, h["target"], log=h["root"] / "gateway.log")
        try:
            listed = {m["name"]: m for m in httpx.get(gw + "/v1/models").json()["data"]}
            assert listed["banking"]["drift"]["flagged"] is False

            predict_all(url, h["news"])  # 250 news articles: half the window now
            drifted = httpx.get(url + "/drift").json()
            assert drifted["flagged"], drifted
            assert drifted["scores"]["ood_rate"] > 0.4  # ~250 of the 500 texts are far from every intent
            assert drifted["scores"]["confidence_shift"] < -0.15  # the head is much less sure of news
            assert any(r.startswith("ood_rate") for r in drifted["reasons"])
            print(f"\ndrift scores: own test split {own['scores']}; + news {drifted['scores']}")  # for the record (-s)
            listed = {m["name"]: m for m in httpx.get(gw + "/v1/models").json()["data"]}
            assert listed["banking"]["drift"]["flagged"] is True
            assert listed["banking"]["drift"]["scores"]["ood_rate"] == drifted["scores"]["ood_rate"]
        finally:
            stop(gateway)

        gauges = httpx.get(url + "/metrics").text
        assert 'polyhead_head_drift_flagged{head="banking"} 1.0' in gauges
        assert 'polyhead_head_drift_score{head="banking",score="ood_rate"}' in gauges
        predict_all(url, h["news"][:50])  # still drifted: no second warning
    warnings = [json.loads(line) for line in log.read_text().splitlines()
                if line.startswith("{") and "drift: head flagged" in line]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning" and warnings[0]["head"] == "banking"


def test_a_head_trained_before_drift_stats_still_serves(banking_head, tmp_path):
    """An artifact of format 1 (no format_version, no drift.npz) loads and answers; drift is
    'available': false. Switching versions restarts the window."""
    h = banking_head
    models = tmp_path / "models"
    shutil.copytree(h["models"], models)
    current = h["report"].version
    old_version = "20200101T000000Z"
    old = models / "banking" / old_version
    shutil.copytree(models / "banking" / current, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest.pop("format_version")
    manifest.pop("drift")
    manifest["version"] = old_version
    (old / "manifest.json").write_text(json.dumps(manifest))
    (old / "drift.npz").unlink()

    db = f"sqlite:///{tmp_path / 'inference.db'}"
    with head_process(h["config"], models, h["target"], db_url=db, spool_dir=tmp_path / "spool",
                      log=tmp_path / "head.log") as (_, url):
        wait_ready(url)
        predict_all(url, h["news"][:50])
        assert httpx.get(url + "/drift").json()["window"] == 50

        r = httpx.post(url + "/admin/reload", json={"version": old_version}, headers=ADMIN)
        assert r.status_code == 200, r.text
        answer = httpx.post(url + "/predict", json={"text": "what is my checking account balance"})
        assert answer.status_code == 200 and answer.json()["version"] == old_version
        drift = httpx.get(url + "/drift").json()
        assert drift["available"] is False and drift["window"] == 0 and drift["version"] == old_version
        assert drift["flagged"] is False and drift["scores"] == {"label_shift_js": None, "confidence_shift": None,
                                                                 "ood_rate": None}
        assert httpx.get(url + "/info").json()["drift"] == {"flagged": False, "scores": drift["scores"],
                                                           "available": False}
