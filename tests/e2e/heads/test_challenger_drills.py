"""Issue 23's drills on the real model: real embedder, head and gateway processes, SQLite inference log.

A CLINC150 banking head (15 intents) is the champion; a challenger trained on the same texts with
shuffled labels is the bad model every gate and guard must catch:
(a) shadowed on live traffic with feedback, it agrees with the champion near chance level and the
    `auto` gate never promotes it;
(c) promoted by hand anyway, the guard rolls it back by itself once the feedback is in;
(d) promotions and rollbacks under concurrent load fail no request.
"""

from __future__ import annotations

import json
import random
import threading
import time

import httpx
import pytest
import yaml

from heads import roles
from tests.e2e.gateway.test_gateway import start_gateway, stop
from tests.e2e.heads.fixtures import ADMIN, head_process, train, wait_ready
from tests.e2e.heads.test_drift import sample, write_jsonl

pytestmark = pytest.mark.timeout(900)

PER_CLASS = {"train": 30, "test": 20}  # 15 intents: 450 / 300 texts
POLICY = {"mode": "auto", "min_shadowed": 100, "min_paired_feedback": 100, "min_class_feedback": 5,
          "guard_min_feedback": 60, "guard_margin": 0.05, "guard_s": 3600}


@pytest.fixture(scope="module")
def drill(shared_datasets, server_process, tmp_path_factory):
    _, target = server_process
    root = tmp_path_factory.mktemp("challengers")
    configs, models = root / "configs", root / "models"
    configs.mkdir()
    banking = shared_datasets / "clinc150" / "domains" / "banking"
    rows = {split: sample(banking / f"{split}.jsonl", n) for split, n in PER_CLASS.items()}
    for split, data in rows.items():
        write_jsonl(configs / f"banking_{split}.jsonl", data)
    config = configs / "banking.yaml"
    config.write_text(yaml.safe_dump({"name": "banking", "description": "CLINC150 banking (challenger drills)",
                                      "dataset": {s: f"banking_{s}.jsonl" for s in PER_CLASS},
                                      "promotion": POLICY}))
    champion = train(config, models, target)
    # The bad challenger: the same texts, labels shuffled among them (the label prior is kept).
    shuffled = configs / "shuffled"
    shuffled.mkdir()
    labels = [r["label"] for r in rows["train"]]
    random.Random(7).shuffle(labels)
    write_jsonl(shuffled / "banking_train.jsonl", [{"text": r["text"], "label": lab} for r, lab in zip(rows["train"],
                                                                                                        labels)])
    write_jsonl(shuffled / "banking_test.jsonl", rows["test"])
    (shuffled / "banking.yaml").write_text(config.read_text())
    challenger = train(shuffled / "banking.yaml", models, target)
    assert (champion.role, challenger.role) == ("champion", "challenger")
    stream = [(r["text"], r["label"]) for r in rows["test"]]
    return {"root": root, "config": config, "models": models, "target": target, "champion": champion.version,
            "challenger": challenger.version, "stream": stream}


def stream_with_feedback(gw: str, texts: list[tuple[str, str]], batch: int = 25) -> None:
    for s in range(0, len(texts), batch):
        part = texts[s:s + batch]
        r = httpx.post(gw + "/v1/models/banking/predict", json={"texts": [t for t, _ in part]}, timeout=60)
        assert r.status_code == 200, r.text
        pid = r.json()["prediction_id"]
        fb = httpx.post(gw + "/v1/models/banking/feedback", json={"items": [
            {"prediction_id": pid, "index": i, "label": label} for i, (_, label) in enumerate(part)]}, timeout=60)
        assert fb.status_code == 200, fb.text


def test_drills_shuffled_challenger_guard_and_load(drill):
    d = drill
    db = f"sqlite:///{d['root'] / 'inference.db'}"
    with head_process(d["config"], d["models"], d["target"], db_url=db, spool_dir=d["root"] / "spool",
                      log=d["root"] / "head.log") as (_, url):
        wait_ready(url)
        routes = d["root"] / "routes.yaml"
        routes.write_text(yaml.safe_dump({"banking": url}))
        gateway, gw = start_gateway(d["config"].parent, routes, d["target"], "--db-url", db,
                                    "--policy-check-interval-s", "0.2", log=d["root"] / "gateway.log")
        try:
            # (a) the shuffled challenger, shadowed on 200 live texts with feedback: near-chance agreement,
            # far worse on the same texts, never promoted by the auto gate (which runs after each feedback)
            stream_with_feedback(gw, d["stream"][:200])
            body = httpx.get(gw + "/v1/models/banking/challengers", timeout=60).json()
            assert body["champion"] == d["champion"] and body["policy"]["mode"] == "auto"
            (ch,) = body["challengers"]
            assert ch["version"] == d["challenger"] and ch["in_shadow"] and ch["shadowed"] == 200
            assert ch["agreement"] < 0.3, ch["agreement"]  # 15 intents: chance is ~0.07
            fb = ch["feedback"]
            assert fb["paired"] == 200 and fb["champion_accuracy"] > 0.8 and fb["challenger_accuracy"] < 0.3
            assert fb["mcnemar_p"] < 1e-6 and fb["champion_only_correct"] > fb["challenger_only_correct"]
            assert ch["flips"] and all(f["examples"] for f in ch["flips"][:3])
            assert ch["gate"]["act"] is False
            failed = {c["name"] for c in ch["gate"]["checks"] if not c["ok"]}
            assert "challenger right on more of the disagreements" in failed
            assert httpx.post(gw + "/v1/models/banking/evaluate", timeout=60).json()["action"] is None
            assert roles.read_state(d["models"], "banking").champion == d["champion"]
            assert roles.read_audit(d["models"], "banking") == []
            print(f"\ndrill (a): agreement {ch['agreement']}, live accuracy champion {fb['champion_accuracy']} vs "
                  f"shuffled {fb['challenger_accuracy']} on {fb['paired']} texts, McNemar p={fb['mcnemar_p']:.2g}")

            # (d) promote and roll back by hand under concurrent load: no request fails
            failures, answered, done = [], [], threading.Event()

            def load():
                with httpx.Client(timeout=30) as client:
                    i = 0
                    while not done.is_set():
                        r = client.post(gw + "/v1/models/banking/predict",
                                        json={"text": d["stream"][i % len(d["stream"])][0]})
                        if r.status_code != 200:
                            failures.append(r.status_code)
                        answered.append(r.status_code)
                        i += 1

            threads = [threading.Thread(target=load) for _ in range(4)]
            for t in threads:
                t.start()
            served = set()
            try:
                for _ in range(3):
                    r = httpx.post(gw + "/v1/models/banking/promote", json={"version": d["challenger"],
                                                                            "reason": "drill (d)"}, timeout=30)
                    assert r.status_code == 200, r.text
                    served.add(r.json()["served"])
                    r = httpx.post(gw + "/v1/models/banking/rollback", json={"reason": "drill (d)"}, timeout=30)
                    assert r.status_code == 200, r.text
                    served.add(r.json()["served"])
            finally:
                done.set()
                for t in threads:
                    t.join()
            assert failures == [] and served == {d["champion"], d["challenger"]}
            print(f"drill (d): 3 promotions and 3 rollbacks under 4 concurrent clients: {len(answered)} predicts, "
                  f"{len(failures)} failed")
            assert roles.read_state(d["models"], "banking").champion == d["champion"]

            # (c) promote the shuffled model by hand; with feedback coming in, the guard rolls it back by itself
            r = httpx.post(gw + "/v1/models/banking/promote", json={"version": d["challenger"],
                                                                    "reason": "drill (c): a bad promotion"})
            assert r.status_code == 200 and r.json()["guard"]["previous"] == d["champion"]
            promoted_at = time.monotonic()
            stream_with_feedback(gw, d["stream"][200:300])
            deadline = time.monotonic() + 20
            while roles.read_state(d["models"], "banking").champion != d["champion"]:
                assert time.monotonic() < deadline, "the guard did not roll back"
                time.sleep(0.2)
            rolled_back_s = time.monotonic() - promoted_at
            assert httpx.post(gw + "/v1/models/banking/predict", json={"text": "what is my balance"}).json()[
                "version"] == d["champion"]
            audit = httpx.get(gw + "/v1/models/banking/audit").json()["entries"]
            last = audit[0]
            assert last["event"] == "rollback" and last["actor"].endswith(":guard") and "guard" in last["reason"]
            guard_fb = last["figures"]["comparison"]["feedback"]
            assert guard_fb["paired"] >= POLICY["guard_min_feedback"]
            assert guard_fb["challenger_accuracy"] - guard_fb["champion_accuracy"] > POLICY["guard_margin"]
            metrics = httpx.get(gw + "/metrics").text
            assert 'polyhead_gateway_rollbacks_total{by="guard",model="banking"} 1.0' in metrics
            print(f"drill (c): rolled back {rolled_back_s:.1f} s after the promotion, on {guard_fb['paired']} "
                  f"paired texts: {json.dumps(last['reason'])}")
        finally:
            stop(gateway)


def test_drill_b_a_challenger_retrained_on_feedback_is_promoted_by_auto(shared_datasets, server_process, tmp_path):
    """(b) The champion learnt banking from 2 texts per intent; production brings other texts, labelled by
    feedback. `polyhead retrain` (due: min_new_feedback) trains a challenger with that feedback; on the next
    texts, with their feedback, the auto gate promotes it, and the audit log has the figures."""
    from typer.testing import CliRunner

    from cli.commands import app

    _, target = server_process
    configs, models = tmp_path / "configs", tmp_path / "models"
    configs.mkdir()
    banking = shared_datasets / "clinc150" / "domains" / "banking"
    train_rows = sample(banking / "train.jsonl", 22)  # 22 per intent: 2 to train on, 20 for production
    seen: dict[str, int] = {}
    initial, production_1 = [], []
    for row in train_rows:
        seen[row["label"]] = seen.get(row["label"], 0) + 1
        (initial if seen[row["label"]] <= 2 else production_1).append(row)
    write_jsonl(configs / "banking_train.jsonl", initial)
    write_jsonl(configs / "banking_test.jsonl", sample(banking / "val.jsonl", 20))  # offline test: val split
    production_2 = sample(banking / "test.jsonl", 20)
    policy = {**POLICY, "min_shadowed": 200, "min_paired_feedback": 200, "min_class_feedback": 10,
              "max_class_recall_drop": 0.1}
    config = configs / "banking.yaml"
    config.write_text(yaml.safe_dump({"name": "banking", "description": "CLINC150 banking (drill b)",
                                      "dataset": {"train": "banking_train.jsonl", "test": "banking_test.jsonl"},
                                      "promotion": policy, "retraining": {"min_new_feedback": 250}}))
    first = train(config, models, target)
    db = f"sqlite:///{tmp_path / 'inference.db'}"
    with head_process(config, models, target, db_url=db, spool_dir=tmp_path / "spool",
                      log=tmp_path / "head.log") as (_, url):
        wait_ready(url)
        routes = tmp_path / "routes.yaml"
        routes.write_text(yaml.safe_dump({"banking": url}))
        gateway, gw = start_gateway(configs, routes, target, "--db-url", db, "--policy-check-interval-s", "0.2",
                                    log=tmp_path / "gateway.log")
        try:
            stream_with_feedback(gw, [(r["text"], r["label"]) for r in production_1])  # 300 texts with feedback
            runner = CliRunner()
            args = ["--heads-dir", str(configs), "--models-dir", str(models), "--db-url", db,
                    "--embedder-target", target, "--gateway", gw]
            out = runner.invoke(app, ["retrain", *args])
            assert out.exit_code == 0, out.output
            lines = [json.loads(x) for x in out.output.splitlines() if x.startswith("{")]
            assert lines[0]["due"] and "300 feedback labels" in lines[0]["reasons"][0], lines
            retrained = lines[-1]
            assert retrained["role"] == "challenger" and retrained["feedback"]["added"] >= 280
            deadline = time.monotonic() + 10
            while not any(c["shadowed"] for c in httpx.get(url + "/roles", headers=ADMIN).json()["challengers"]):
                assert time.monotonic() < deadline, "the head did not pick the challenger up"
                time.sleep(0.2)
            assert httpx.post(gw + "/v1/models/banking/predict", json={"text": "what is my balance"}).json()[
                "version"] == first.version  # still the champion: a challenger is never served straight away

            stream_with_feedback(gw, [(r["text"], r["label"]) for r in production_2])  # 300 new texts
            deadline = time.monotonic() + 20
            while roles.read_state(models, "banking").champion != retrained["version"]:
                assert time.monotonic() < deadline, httpx.get(gw + "/v1/models/banking/challengers").json()
                time.sleep(0.2)
            (entry,) = httpx.get(gw + "/v1/models/banking/audit").json()["entries"]
            assert entry["event"] == "promote" and entry["actor"].endswith(":auto")
            fb = entry["figures"]["comparison"]["feedback"]
            assert fb["paired"] >= 200 and fb["challenger_accuracy"] > fb["champion_accuracy"]
            assert fb["mcnemar_p"] <= policy.get("mcnemar_alpha", 0.05)  # the default level
            assert all(c["ok"] for c in entry["figures"]["decision"]["checks"])
            offline = entry["figures"]["offline"]
            assert set(offline["champion"]) == {"n", "accuracy", "f1_weighted", "f1_macro"}
            print(f"\ndrill (b): promoted by auto on {fb['paired']} paired texts: live accuracy "
                  f"{fb['champion_accuracy']} -> {fb['challenger_accuracy']}, McNemar p={fb['mcnemar_p']:.2g}; "
                  f"offline accuracy {offline['champion']['accuracy']:.3f} -> {offline['challenger']['accuracy']:.3f}")
        finally:
            stop(gateway)
