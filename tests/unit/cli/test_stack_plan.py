"""How `polyhead up` lays heads out in processes (StackSettings.heads_per_process), without starting any."""

from __future__ import annotations

import pytest

from heads.config import load_head_configs
from cli.stack import Stack, StackSettings
from tests.e2e.heads.fixtures import write_head_config

NAMES = ["alpha", "bravo", "charlie", "delta", "echo"]


@pytest.fixture()
def configs(tmp_path):
    for name in NAMES:
        write_head_config(tmp_path / "heads", name)
    return load_head_configs(tmp_path / "heads")


def plan(tmp_path, configs, heads_per_process: int, names=NAMES):
    settings = StackSettings(heads_dir=tmp_path / "heads", var_dir=tmp_path / "var", heads_per_process=heads_per_process,
                             head_base_port=9000)
    settings.var_dir.mkdir(exist_ok=True)
    stack = Stack(settings, console=None)
    children = stack.plan({n: configs[n] for n in names})
    stack.children.update({c.name: c for c in children})
    return stack, children


def test_all_heads_in_one_process_by_default(tmp_path, configs):
    assert StackSettings.model_fields["heads_per_process"].default == 0
    stack, children = plan(tmp_path, configs, 0)
    (pool,) = children
    assert pool.name == "heads:pool-1" and pool.extra["heads"] == NAMES
    assert pool.argv[pool.argv.index("--heads") + 1] == ",".join(NAMES)
    assert stack.head_routes() == {n: f"{pool.url}/heads/{n}" for n in NAMES}


def test_one_process_per_head(tmp_path, configs):
    stack, children = plan(tmp_path, configs, 1)
    assert [c.name for c in children] == [f"head:{n}" for n in NAMES]
    assert len({c.port for c in children}) == len(NAMES)
    assert all("--heads" not in c.argv for c in children)
    assert stack.head_routes() == {c.extra["heads"][0]: c.url for c in children}  # served at the root


def test_pools_of_n_and_new_heads_join_a_new_pool(tmp_path, configs):
    stack, children = plan(tmp_path, configs, 2, names=NAMES[:3])
    assert [c.extra["heads"] for c in children] == [["alpha", "bravo"], ["charlie"]]
    assert all(c.extra["packed"] for c in children)  # a pool of one is still served at /heads/<name>
    later = stack.plan({n: configs[n] for n in NAMES})  # two configs appeared while running
    assert [(c.name, c.extra["heads"]) for c in later] == [("heads:pool-3", ["delta", "echo"])]
    ports = [c.port for c in children + later]
    assert len(set(ports)) == 3
    again = Stack(stack.s, console=None).plan({n: configs[n] for n in NAMES[:3]})
    assert [c.port for c in again] == ports[:2]  # kept across runs (var_dir/ports.json)
