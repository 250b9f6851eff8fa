"""`polyhead up --retrain-every-s N`: a due schedule runs the real `polyhead retrain` in a child
process and makes a challenger, never a champion; runs never overlap; heads with no champion are left alone."""

from __future__ import annotations

import asyncio
import io

from rich.console import Console

from cli.stack import Stack, StackSettings
from heads.artifacts import list_versions
from heads.config import load_head_configs
from heads.roles import read_state
from tests.e2e.heads.fixtures import write_head_config
from tests.unit.conftest import running_embedder


def stack_for(tmp_path, port: int, every_s: float) -> Stack:
    settings = StackSettings(heads_dir=tmp_path / "heads", var_dir=tmp_path / "var", models_dir=tmp_path / "models",
                             host="127.0.0.1", embedder_port=port, retrain_every_s=every_s,
                             gateway_port=9)  # no gateway: no trigger here reads drift
    return Stack(settings, console=Console(file=io.StringIO(), width=300))


async def test_a_due_schedule_makes_a_challenger_never_a_champion(tmp_path):
    write_head_config(tmp_path / "heads", "alpha")
    async with running_embedder() as emb:
        stack = stack_for(tmp_path, emb.server.port, every_s=3600)
        await asyncio.to_thread(stack._ensure_trained, load_head_configs(tmp_path / "heads"))
        (champion,) = list_versions(tmp_path / "models", "alpha")
        # Now alpha's policy makes it due, and a head with no version at all appears.
        config = tmp_path / "heads" / "alpha.yaml"
        config.write_text(config.read_text() + "retraining:\n  max_age_days: 0.000000001\n")
        write_head_config(tmp_path / "heads", "beta")

        schedule = stack.retrain
        assert "--challengers-only" in schedule.argv
        schedule.tick(schedule.next_due - 1)
        assert schedule.proc is None, "not due yet: nothing runs"
        schedule.tick(schedule.next_due)
        assert schedule.running()
        first = schedule.proc
        schedule.tick(schedule.next_due)  # due again while the first run goes on: skipped, not doubled
        assert schedule.proc is first and schedule.skipped == 1 and schedule.runs == 1
        assert await asyncio.to_thread(first.wait, 120) == 0, (tmp_path / "var/logs/retrain.log").read_text()
        schedule.tick(schedule.next_due - 1)  # the supervisor's next tick reports the outcome

    outcome = schedule.last_outcome
    assert outcome["exit_code"] == 0 and outcome["due"] == ["alpha"]
    (made,) = outcome["trained"]
    assert made["head"] == "alpha" and made["role"] == "challenger"
    state = read_state(tmp_path / "models", "alpha")
    assert state.champion == champion and state.challengers == (made["version"],)
    assert list_versions(tmp_path / "models", "beta") == [], "challengers only: no first version made here"
    said = stack.console.file.getvalue()
    assert "scheduled retrain skipped" in said and f"alpha {made['version']} (challenger)" in said


def test_off_by_default(tmp_path):
    stack = stack_for(tmp_path, 1, every_s=0)
    assert StackSettings.model_fields["retrain_every_s"].default == 0
    stack.retrain.tick(10**9)
    assert stack.retrain.proc is None and not (tmp_path / "var" / "logs" / "retrain.log").exists()
