"""Roles (champion/challengers in serving.json), shadow predictions, promote/rollback on a head app.

Narrow tests on the fake embedder; the drills on the real model are in tests/e2e/heads/test_challenger_drills.py."""

from __future__ import annotations

import json
import shutil

import pytest
import sqlalchemy as sa

from heads import roles
from heads.artifacts import list_versions, set_latest_version
from polyhead.errors import ConflictError, NotFoundError
from polyhead.inference_log.reports import build_report
from polyhead.inference_log.schema import make_engine, predictions
from tests.unit.conftest import HEAD, asgi_client, head_app


def versioned_copy(trained_head, tmp_path, extra: int) -> tuple:
    """A models dir with the trained version and `extra` copies of it under later version ids."""
    models = tmp_path / "models"
    shutil.copytree(trained_head.models_dir, models)
    base = trained_head.version
    made = []
    for i in range(extra):
        version = f"2999010{i + 1}T000000Z"
        shutil.copytree(models / HEAD / base, models / HEAD / version)
        made.append(version)
    return models, base, made


def test_old_layouts_read_latest_as_the_champion(trained_head, tmp_path):
    models, base, (v2,) = versioned_copy(trained_head, tmp_path, 1)
    (models / HEAD / roles.STATE_FILE).unlink(missing_ok=True)
    set_latest_version(models, HEAD, v2)
    state = roles.read_state(models, HEAD)
    assert (state.champion, state.challengers, state.from_file) == (v2, (), False)
    assert roles.read_state(models, "no-such-head").champion is None


def test_a_new_version_is_a_challenger_the_first_a_champion_and_promote_swaps(trained_head, tmp_path):
    models, base, (v2, v3, v4) = versioned_copy(trained_head, tmp_path, 3)
    (models / HEAD / roles.STATE_FILE).write_text('{"champion": null}')  # a head with no version yet
    assert roles.register_trained(models, HEAD, base).champion == base  # the head's first version
    state = roles.register_trained(models, HEAD, v2)
    assert (state.champion, state.challengers) == (base, (v2,))
    state = roles.register_trained(models, HEAD, v3, max_challengers=1)  # the oldest challenger retires
    assert state.challengers == (v3,) and state.history[-1]["event"] == "retired"
    state = roles.promote(models, HEAD, actor="alice", reason="better", figures={"acc": 0.9}, guard_s=60)
    assert (state.champion, state.challengers) == (v3, (base,))
    assert state.guard.previous == base
    with pytest.raises(ConflictError, match="already the champion"):
        roles.promote(models, HEAD, v3, actor="a", reason="r")
    with pytest.raises(NotFoundError):
        roles.promote(models, HEAD, "20000101T000000Z", actor="a", reason="r")
    with pytest.raises(ConflictError, match="champion .* changed"):
        roles.promote(models, HEAD, base, actor="a", reason="r", expect_champion=v2)
    state = roles.rollback(models, HEAD, actor="guard", reason="worse live")
    assert (state.champion, state.challengers, state.guard) == (base, (v3,), None)
    # survives a restart: it is a file; and `latest` (the newest trained) is not what is served
    again = roles.read_state(models, HEAD)
    assert again.champion == base and again.from_file
    state = roles.register_trained(models, HEAD, v4, promote=True, guard_s=60)  # `train --promote`: a promotion
    assert (state.champion, state.guard.previous) == (v4, base) and base in state.challengers
    audit = roles.read_audit(models, HEAD)
    assert [a["event"] for a in audit] == ["promote", "rollback", "promote"]
    assert audit[0]["reason"] == "trained with --promote" and audit[0]["previous"] == base
    assert audit[2]["actor"] == "alice" and audit[2]["figures"] == {"acc": 0.9}


async def test_challengers_shadow_every_text_and_only_the_champion_answers(trained_head, embedder, tmp_path):
    models, base, (twin, broken) = versioned_copy(trained_head, tmp_path, 2)
    (models / HEAD / broken / "weights.npz").write_bytes(b"not a model")
    state = roles.ServingState(base, (twin, broken))
    (models / HEAD / roles.STATE_FILE).write_text(json.dumps(state.to_json()))
    app = head_app(trained_head, embedder.target, tmp_path, models_dir=models, admin_token="t")
    admin = {"authorization": "Bearer t"}  # heads refuse admin routes without their token
    async with asgi_client(app) as client:
        reply = await client.post("/predict", json={"texts": ["I was charged twice", "the app crashes"]})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["version"] == base
        view = (await client.get("/roles", headers=admin)).json()
        assert view["champion"] == base
        by_version = {c["version"]: c for c in view["challengers"]}
        assert by_version[twin]["shadowed"] and by_version[twin]["error"] is None
        assert not by_version[broken]["shadowed"] and "cannot load" in by_version[broken]["error"]
        assert app.state.service.inference_log.flush(10)
        engine = make_engine(f"sqlite:///{tmp_path / 'inference.db'}")
        rows = engine.connect().execute(sa.select(predictions.c.head_version, predictions.c.shadow,
                                                  predictions.c.text_index, predictions.c.label)
                                        .where(predictions.c.request_id == body["request_id"])).all()
        served = sorted((r.text_index, r.label) for r in rows if not r.shadow)
        shadow = sorted((r.text_index, r.label) for r in rows if r.shadow)
        assert served == shadow == sorted(enumerate(p["label"] for p in body["predictions"]))
        assert {r.head_version for r in rows if r.shadow} == {twin}
        # reports count what callers got, not the shadow rows
        report = build_report(engine, HEAD)
        assert report["summary"]["texts"] == 2 and [v["version"] for v in report["versions"]] == [base]

        # a challenger that raises is dropped; the champion answers
        service = app.state.service
        (challenger,) = service.manager.challengers
        challenger.predict = lambda vectors: (_ for _ in ()).throw(RuntimeError("boom"))
        reply = await client.post("/predict", json={"text": "refund please"})
        assert reply.status_code == 200 and reply.json()["version"] == base
        assert service.manager.challengers == ()
        assert "dropped from shadow: RuntimeError: boom" in service.manager.challenger_errors[twin]

        # promote over HTTP: the state file and the served version change together
        promoted = await client.post("/admin/promote", json={"version": twin, "actor": "bob", "reason": "test"}, headers=admin)
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["served"] == twin and (await client.post(
            "/predict", json={"text": "refund please"})).json()["version"] == twin
        assert roles.read_state(models, HEAD).challengers == (broken, base)
        assert (await client.post("/admin/promote", json={"version": "20000101T000000Z"}, headers=admin)).status_code == 404
        assert (await client.post("/admin/promote", json={"version": twin}, headers=admin)).status_code == 409  # already champion
        back = await client.post("/admin/rollback", json={"actor": "bob", "reason": "undo"}, headers=admin)
        assert back.status_code == 200 and back.json()["served"] == base
        audit = (await client.get("/audit", headers=admin)).json()["entries"]
        assert [a["event"] for a in audit] == ["rollback", "promote"] and audit[1]["actor"] == "bob"
        engine.dispose()


def test_list_versions_ignores_the_state_and_audit_files(trained_head, tmp_path):
    models, base, (v2,) = versioned_copy(trained_head, tmp_path, 1)
    roles.register_trained(models, HEAD, v2)
    roles.append_audit(models, HEAD, {"event": "x"})
    assert list_versions(models, HEAD) == sorted([base, v2])


async def test_one_request_with_three_challengers_is_one_spool_append(trained_head, embedder, tmp_path):
    models, base, challengers = versioned_copy(trained_head, tmp_path, 3)
    state = roles.ServingState(base, tuple(challengers))
    (models / HEAD / roles.STATE_FILE).write_text(json.dumps(state.to_json()))
    app = head_app(trained_head, embedder.target, tmp_path, models_dir=models)
    async with asgi_client(app) as client:
        await client.get("/readyz")
        log = app.state.service.inference_log
        assert log.flush(10)
        spool = log._spool
        appends: list[int] = []
        real_append = spool.append

        def counting_append(data: bytes, rows: int) -> None:  # the real append, counted
            appends.append(rows)
            real_append(data, rows)

        spool.append = counting_append
        reply = await client.post("/predict", json={"texts": ["I was charged twice", "the app crashes"]})
        assert reply.status_code == 200, reply.text
        assert appends == [2 * 4], "the champion's 2 rows and 3 challengers' 2 each: one write() of 8 rows"
        assert log.flush(10)
        engine = make_engine(f"sqlite:///{tmp_path / 'inference.db'}")
        with engine.connect() as conn:
            rows = conn.execute(sa.select(predictions.c.head_version, predictions.c.shadow, predictions.c.text_index)
                                .where(predictions.c.request_id == reply.json()["request_id"])).all()
        assert sorted((r.head_version, bool(r.shadow), r.text_index) for r in rows) == sorted(
            [(base, False, i) for i in range(2)] + [(v, True, i) for v in challengers for i in range(2)])
