"""`polyhead up --embedder-replicas N`: one child per replica, and one target listing them all."""

from __future__ import annotations

from pathlib import Path

from cli.stack import Stack, StackSettings, replica_target


def test_replica_target_lists_every_replica_for_round_robin():
    assert replica_target("127.0.0.1", [50051]) == "127.0.0.1:50051"
    assert replica_target("127.0.0.1", [50051, 50052]) == "ipv4:127.0.0.1:50051,127.0.0.1:50052"
    assert replica_target("::1", [7, 8]) == "ipv6:[::1]:7,[::1]:8"
    assert replica_target("localhost", [7, 8]).startswith("ipv4:127.0.0.1:7,")


def test_replicas_get_consecutive_ports_and_heads_get_every_replica_and_the_l2(tmp_path: Path):
    settings = StackSettings(var_dir=tmp_path, embedder_port=6000, embedder_metrics_port=7000, embedder_replicas=3,
                             l2_cache_url="redis://127.0.0.1:6379/0")
    stack = Stack(settings, console=None)
    replicas = [stack._embedder(i) for i in range(3)]
    assert [c.name for c in replicas] == ["embedder", "embedder-2", "embedder-3"]
    assert [c.port for c in replicas] == [6000, 6001, 6002]
    assert all({"--l2-cache-url", "redis://127.0.0.1:6379/0"} <= set(c.argv) for c in replicas)
    assert replicas[2].argv[replicas[2].argv.index("--metrics-port") + 1] == "7002"
    head = stack._head("spam", tmp_path / "spam.yaml", 8101)
    target = head.argv[head.argv.index("--embedder-target") + 1]
    assert target == "ipv4:127.0.0.1:6000,127.0.0.1:6001,127.0.0.1:6002"
    assert stack.env["POLYHEAD_EMBEDDER_TARGET"] == target  # the gateway and `polyhead` commands too
    assert "--l2-cache-url" in head.argv
