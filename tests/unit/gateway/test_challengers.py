"""Challengers through the gateway (fake model, in-process head over real HTTP, SQLite): the comparison,
admin promotion, the guard's rollback and the auto gate. The drills on the real model are e2e."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import yaml

from heads import roles
from heads.model import HeadModel
from polyhead.inference_log.challengers import mcnemar_exact
from tests.unit.conftest import HEAD, HEAD_CONFIGS, asgi_client, gateway_app, serve_http
from tests.unit.conftest import TrainedHead

ADMIN_TOKEN = "admin-secret-for-tests"  # heads refuse admin routes without one
ROOT_DATA = HEAD_CONFIGS.parent / "datasets" / HEAD


def labelled_texts(n: int) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (ROOT_DATA / "test.jsonl").read_text().splitlines() if line.strip()]
    return [(r["text"], r["label"]) for r in rows][:n]


def rotated_copy(models: Path, base: str, version: str) -> None:
    """A worse version: the same weights with every label moved one place (always wrong when sure)."""
    shutil.copytree(models / HEAD / base, models / HEAD / version)
    model = HeadModel.load(models / HEAD / version / "weights.npz")
    rotated = HeadModel(model.head_type, model.weights, model.labels[1:] + model.labels[:1],
                        activation=model.activation, meta=model.meta)
    rotated.save(models / HEAD / version / "weights.npz")
    metrics = json.loads((models / HEAD / version / "metrics.json").read_text())
    metrics["test"] = {**metrics["test"], "accuracy": 0.05}
    (models / HEAD / version / "metrics.json").write_text(json.dumps(metrics))


def flattened_copy(models: Path, base: str, version: str) -> None:
    """A drifted version: the same answers, but its logits shrunk 20x, so its live confidence falls far
    below the held-out mean its own drift reference (copied unchanged) records."""
    shutil.copytree(models / HEAD / base, models / HEAD / version)
    model = HeadModel.load(models / HEAD / version / "weights.npz")
    last = {"logreg": ("W", "b"), "mlp": ("W2", "b2", "Ws")}[model.head_type]
    weights = {k: v * 0.05 if k in last else v for k, v in model.weights.items()}
    HeadModel(model.head_type, weights, model.labels, activation=model.activation,
              meta=model.meta).save(models / HEAD / version / "weights.npz")


def setup(trained_head, tmp_path, champion_good: bool, **policy):
    models = tmp_path / "models"
    shutil.copytree(trained_head.models_dir, models)
    base, worse = trained_head.version, "29990101T000000Z"
    rotated_copy(models, base, worse)
    champion, challenger = (base, worse) if champion_good else (worse, base)
    (models / HEAD / roles.STATE_FILE).write_text(json.dumps(roles.ServingState(champion, (challenger,)).to_json()))
    raw = yaml.safe_load((HEAD_CONFIGS / f"{HEAD}.yaml").read_text())
    raw["promotion"] = {"min_shadowed": 10, "min_paired_feedback": 10, "min_class_feedback": 2,
                        "guard_min_feedback": 10, **policy}
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / f"{HEAD}.yaml").write_text(yaml.safe_dump(raw))
    head = TrainedHead(configs / f"{HEAD}.yaml", models, champion, trained_head.labels, trained_head.fingerprint)
    return head, models, champion, challenger


async def predict_with_feedback(gw, texts: list[tuple[str, str]]) -> None:
    reply = await gw.post(f"/v1/models/{HEAD}/predict", json={"texts": [t for t, _ in texts]})
    assert reply.status_code == 200, reply.text
    pid = reply.json()["prediction_id"]
    fb = await gw.post(f"/v1/models/{HEAD}/feedback", json={"items": [
        {"prediction_id": pid, "index": i, "label": label} for i, (_, label) in enumerate(texts)]})
    assert fb.status_code == 200, fb.text


def test_mcnemar_exact_matches_the_binomial_tail():
    assert mcnemar_exact(0, 0) == 1.0
    assert abs(mcnemar_exact(0, 10) - 2 / 1024) < 1e-12
    assert abs(mcnemar_exact(3, 3) - 1.0) < 1e-12


async def test_compare_promote_and_the_guard_rolls_a_worse_champion_back(trained_head, embedder, tmp_path):
    from heads.http_server import create_app
    from heads.settings import HeadSettings

    head, models, good, worse = setup(trained_head, tmp_path, champion_good=True)
    db_url = f"sqlite:///{tmp_path / 'inference.db'}"
    app = create_app(HeadSettings(config=head.config, models_dir=models, embedder_target=embedder.target, port=0,
                                  db_url=db_url, spool_dir=tmp_path / "spool", version_poll_s=0, readiness_ttl_s=0,
                                  admin_token=ADMIN_TOKEN))
    async with serve_http(app) as url:
        (tmp_path / "routes.yaml").write_text(yaml.safe_dump({HEAD: url}))
        gw_app = gateway_app(head.config.parent, tmp_path / "routes.yaml", embedder.target, db_url, admin_token=ADMIN_TOKEN)
        async with asgi_client(gw_app, "http://gateway") as gw:
            texts = labelled_texts(60)
            await predict_with_feedback(gw, texts[:20])
            reply = await gw.get(f"/v1/models/{HEAD}/challengers")
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["champion"] == good and body["redacted"] is False
            (ch,) = body["challengers"]
            assert ch["version"] == worse and ch["in_shadow"] and ch["shadowed"] == 20
            assert ch["agreement"] < 0.5 and ch["flips"] and ch["flips"][0]["examples"]
            fb = ch["feedback"]
            assert fb["paired"] == 20 and fb["champion_accuracy"] > fb["challenger_accuracy"]
            assert fb["mcnemar_p"] == round(mcnemar_exact(fb["champion_only_correct"], fb["challenger_only_correct"]), 8)
            assert fb["champion_only_correct"] > fb["challenger_only_correct"]
            assert any(c["recall_change"] < 0 for c in fb["per_class"]) and sum(c["support"] for c in fb["per_class"]) == 20
            assert ch["offline_test"]["accuracy"] == 0.05 and body["champion_offline_test"]["accuracy"] > 0.05
            assert ch["gate"]["act"] is False and "manual" in ch["gate"]["reason"]

            # an admin promotes the worse version by hand; the guard watches it
            promoted = await gw.post(f"/v1/models/{HEAD}/promote", json={"version": worse, "reason": "try it"})
            assert promoted.status_code == 200, promoted.text
            assert promoted.json()["served"] == worse and promoted.json()["guard"]["previous"] == good
            served = (await gw.post(f"/v1/models/{HEAD}/predict", json={"text": "refund"})).json()["version"]
            assert served == worse
            assert (await gw.post(f"/v1/models/{HEAD}/promote", json={"version": "nope"})).status_code == 404

            # 20 texts were not enough (0.3 behind, McNemar p = 0.18): the guard waits until the shortfall is significant
            await predict_with_feedback(gw, texts[20:40])
            await predict_with_feedback(gw, texts[40:60])
            result = (await gw.post(f"/v1/models/{HEAD}/evaluate")).json()
            assert result["action"] == "rollback", result
            assert roles.read_state(models, HEAD).champion == good
            assert (await gw.post(f"/v1/models/{HEAD}/predict", json={"text": "refund"})).json()["version"] == good
            audit = (await gw.get(f"/v1/models/{HEAD}/audit")).json()["entries"]
            assert [a["event"] for a in audit] == ["rollback", "promote"]
            assert audit[0]["actor"].endswith(":guard") and audit[0]["figures"]["comparison"]["feedback"]["paired"] == len(texts) - 20
            assert audit[1]["actor"].startswith("anonymous@") and audit[1]["reason"] == "try it"


async def test_auto_promotes_a_better_challenger_and_never_a_worse_one(trained_head, embedder, tmp_path):
    from heads.http_server import create_app
    from heads.settings import HeadSettings

    head, models, worse, good = setup(trained_head, tmp_path, champion_good=False, mode="auto")
    db_url = f"sqlite:///{tmp_path / 'inference.db'}"
    app = create_app(HeadSettings(config=head.config, models_dir=models, embedder_target=embedder.target, port=0,
                                  db_url=db_url, spool_dir=tmp_path / "spool", version_poll_s=0, readiness_ttl_s=0,
                                  admin_token=ADMIN_TOKEN))
    async with serve_http(app) as url:
        (tmp_path / "routes.yaml").write_text(yaml.safe_dump({HEAD: url}))
        async with asgi_client(gateway_app(head.config.parent, tmp_path / "routes.yaml", embedder.target, db_url, admin_token=ADMIN_TOKEN),
                               "http://gateway") as gw:
            texts = labelled_texts(30)
            await predict_with_feedback(gw, texts[:5])
            assert (await gw.post(f"/v1/models/{HEAD}/evaluate")).json()["action"] is None  # too little evidence
            await predict_with_feedback(gw, texts[5:30])
            result = (await gw.post(f"/v1/models/{HEAD}/evaluate")).json()
            assert result["action"] == "promote" and result["version"] == good, result
            state = roles.read_state(models, HEAD)
            assert (state.champion, state.challengers) == (good, (worse,))
            (entry,) = roles.read_audit(models, HEAD)
            assert entry["actor"].endswith(":auto")
            checks = {c["name"]: c for c in entry["figures"]["decision"]["checks"]}
            assert all(c["ok"] for c in checks.values()) and checks["paired feedback"]["value"] >= 10
            # the worse version is now the challenger: the gate never promotes it back
            await predict_with_feedback(gw, texts[:30])
            result = (await gw.post(f"/v1/models/{HEAD}/evaluate")).json()
            assert result["action"] is None
            assert roles.read_state(models, HEAD).champion == good


async def test_promotion_needs_an_admin_key_and_example_texts_are_for_admins_only(trained_head, embedder, tmp_path):
    from gateway.auth import new_key
    from gateway.http_server import create_app as gateway_create_app
    from gateway.settings import ApiKey, GatewaySettings
    from heads.http_server import create_app
    from heads.settings import HeadSettings

    head, models, good, worse = setup(trained_head, tmp_path, champion_good=True)
    db_url = f"sqlite:///{tmp_path / 'inference.db'}"
    (admin_key, admin_hash), (user_key, user_hash) = new_key(), new_key()
    app = create_app(HeadSettings(config=head.config, models_dir=models, embedder_target=embedder.target, port=0,
                                  db_url=db_url, spool_dir=tmp_path / "spool", version_poll_s=0, readiness_ttl_s=0,
                                  admin_token=ADMIN_TOKEN))
    async with serve_http(app) as url:
        (tmp_path / "routes.yaml").write_text(yaml.safe_dump({HEAD: url}))
        settings = GatewaySettings(heads_dir=head.config.parent, routes_file=tmp_path / "routes.yaml",
                                   embedder_target=embedder.target, reload_interval_s=0, port=0, db_url=db_url,
                                   admin_token=ADMIN_TOKEN,
                                   api_keys=[ApiKey(name="ops", sha256=admin_hash),
                                             ApiKey(name="app", sha256=user_hash, models=[HEAD])])
        async with asgi_client(gateway_create_app(settings), "http://gateway") as gw:
            user, admin = {"authorization": f"Bearer {user_key}"}, {"authorization": f"Bearer {admin_key}"}
            reply = await gw.post(f"/v1/models/{HEAD}/predict", json={"texts": [t for t, _ in labelled_texts(10)]},
                                  headers=user)
            assert reply.status_code == 200
            app.state.service.inference_log.flush(10)
            as_user = (await gw.get(f"/v1/models/{HEAD}/challengers", headers=user)).json()
            as_admin = (await gw.get(f"/v1/models/{HEAD}/challengers", headers=admin)).json()
            assert as_user["challengers"][0]["flips"] and not any(f["examples"] for f in as_user["challengers"][0]["flips"])
            assert any(f["examples"] for f in as_admin["challengers"][0]["flips"])
            assert (await gw.post(f"/v1/models/{HEAD}/promote", json={})).status_code == 401
            refused = await gw.post(f"/v1/models/{HEAD}/promote", json={}, headers=user)
            assert refused.status_code == 403 and "admin" in refused.json()["error"]["message"]
            assert (await gw.post(f"/v1/models/{HEAD}/rollback", json={}, headers=user)).status_code == 403
            assert roles.read_state(models, HEAD).champion == good
            nothing = await gw.post(f"/v1/models/{HEAD}/rollback", json={}, headers=admin)
            assert nothing.status_code == 409 and "no earlier champion" in nothing.json()["error"]["message"]
            promoted = await gw.post(f"/v1/models/{HEAD}/promote", json={"reason": "x" * 2001}, headers=admin)
            assert promoted.status_code == 422 and "reason" in promoted.text
            promoted = await gw.post(f"/v1/models/{HEAD}/promote", json={}, headers=admin)  # the only challenger
            assert promoted.status_code == 200 and promoted.json()["champion"] == worse
            (entry,) = (await gw.get(f"/v1/models/{HEAD}/audit", headers=user)).json()["entries"]
            assert entry["actor"] == "key:ops" and entry["version"] == worse


async def until_logged(gw, shadowed: int) -> None:
    """The head's spool reaches the DB a moment after the answer: wait until the guard sees `shadowed` texts."""
    for _ in range(100):
        view = (await gw.get(f"/v1/models/{HEAD}/challengers")).json()
        checks = (view["guard"]["decision"] or {}).get("checks", [])
        if any(c["name"].startswith("texts both answered") and c["value"] >= shadowed for c in checks):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the guard never saw {shadowed} shadowed texts")


async def test_the_guard_rolls_back_a_champion_whose_confidence_drifts_from_its_own_reference(
        trained_head, embedder, tmp_path):
    from gateway import metrics
    from heads.http_server import create_app
    from heads.settings import HeadSettings

    head, models, good, _ = setup(trained_head, tmp_path, champion_good=True, guard_min_shadowed=15,
                                  guard_confidence_margin=0.1)
    flat = "29990202T000000Z"
    flattened_copy(models, good, flat)
    roles.register_trained(models, HEAD, flat)
    db_url = f"sqlite:///{tmp_path / 'inference.db'}"
    app = create_app(HeadSettings(config=head.config, models_dir=models, embedder_target=embedder.target, port=0,
                                  db_url=db_url, spool_dir=tmp_path / "spool", version_poll_s=0, readiness_ttl_s=0,
                                  admin_token=ADMIN_TOKEN))
    rolled = metrics.GUARD_ROLLBACKS.labels(HEAD, "drift")
    before = rolled._value.get()
    async with serve_http(app) as url:
        (tmp_path / "routes.yaml").write_text(yaml.safe_dump({HEAD: url}))
        gw_app = gateway_app(head.config.parent, tmp_path / "routes.yaml", embedder.target, db_url, admin_token=ADMIN_TOKEN)
        async with asgi_client(gw_app, "http://gateway") as gw:
            promoted = await gw.post(f"/v1/models/{HEAD}/promote", json={"version": flat, "reason": "try it"})
            assert promoted.status_code == 200, promoted.text
            texts = [t for t, _ in labelled_texts(20)]
            reply = await gw.post(f"/v1/models/{HEAD}/predict", json={"texts": texts[:10]})
            assert reply.status_code == 200
            await until_logged(gw, 10)
            waits = (await gw.post(f"/v1/models/{HEAD}/evaluate")).json()
            assert waits["action"] is None and "10 of 15 shadowed texts" in waits["reason"], waits
            await gw.post(f"/v1/models/{HEAD}/predict", json={"texts": texts[10:]})
            await until_logged(gw, 20)
            # No feedback at all: the drift check alone decides.
            view = (await gw.get(f"/v1/models/{HEAD}/challengers")).json()
            assert view["guard"]["decision"]["act"] and view["guard"]["decision"]["triggers"] == ["drift"]
            result = (await gw.post(f"/v1/models/{HEAD}/evaluate")).json()
            assert result["action"] == "rollback" and "training reference" in result["reason"], result
            assert roles.read_state(models, HEAD).champion == good
            (entry, _) = (await gw.get(f"/v1/models/{HEAD}/audit")).json()["entries"]
    assert entry["event"] == "rollback" and entry["actor"].endswith(":guard")
    refs = entry["figures"]["reference_confidence"]
    assert refs["champion"] == refs["previous"], "the copy keeps its reference; only its live confidence moved"
    conf = entry["figures"]["comparison"]["confidence"]
    assert conf["champion_mean"] < conf["challenger_mean"] - 0.1 and entry["figures"]["comparison"]["shadowed"] == 20
    check = [c for c in entry["figures"]["decision"]["checks"] if c["name"].startswith("confidence shift")][0]
    assert check["ok"] is False and check["value"] > 0.1
    assert rolled._value.get() == before + 1
