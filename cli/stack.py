"""`polyhead up`: the whole stack on one machine, as supervised child processes on loopback.

Embedder first (it exports the bundled model on first start), then any missing head artifacts
are trained through it, then the heads (packed into one or a few processes, or one process per
head: StackSettings.heads_per_process) and the gateway. Children that crash are restarted with
backoff; head configs added while running are trained, started and routed; Ctrl-C / SIGTERM
stops everything. A second run re-does nothing: artifacts and the exported model are kept.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cli.processes import terminate
from cli.retrain_schedule import RetrainSchedule
from polyhead.settings import (
    DEFAULT_EMBEDDER_METRICS_PORT,
    DEFAULT_EMBEDDER_PORT,
    DEFAULT_GATEWAY_PORT,
    DEFAULT_HEADS_DIR,
    DEFAULT_HOST,
    DEFAULT_MODELS_DIR,
    PolyheadSettings,
    Port,
)

RESTART_BACKOFF_MAX_S = 30.0


class StackSettings(PolyheadSettings):
    """`polyhead up`: where the stack's files are and which loopback ports its services take."""

    section = "stack"
    model_config = SettingsConfigDict(env_prefix="POLYHEAD_STACK_", extra="forbid")

    heads_dir: Path = Field(DEFAULT_HEADS_DIR, description="Head configs to serve")
    models_dir: Path = Field(DEFAULT_MODELS_DIR, description="Trained artifacts")
    var_dir: Path = Field(Path("var"), description="Logs, inference DB, spool, stack state")
    host: str = Field(DEFAULT_HOST, description="Address every service listens on")
    gateway_port: int = Port(DEFAULT_GATEWAY_PORT, "The gateway's port (the stack's front door)")
    embedder_port: int = Port(DEFAULT_EMBEDDER_PORT, "The embedder's gRPC port")
    embedder_metrics_port: int = Port(DEFAULT_EMBEDDER_METRICS_PORT, "The embedder's Prometheus port")
    embedder_replicas: int = Field(1, ge=1, le=16, description="Embedder processes (ports embedder_port, +1, ...); "
                                   "heads and the gateway balance over them, so one dying costs no request")
    l2_cache_url: str | None = Field(None, description="Shared L2 embedding cache (Redis URL) for the embedders, "
                                     "read by the heads while no embedder answers; unset = none")
    head_base_port: int = Port(8101, "Heads take ports from here up (kept per head in var_dir/ports.json)")
    db_url: str | None = Field(None, description="Inference DB (SQLAlchemy URL); default SQLite in var_dir")
    heads_per_process: int = Field(0, ge=0, le=1000, description="Heads packed in one head process: 0 = all in "
                                   "one (cheapest; the default, see BENCHMARKS.md), 1 = one process per head "
                                   "(isolation), N = pools of N")
    head_standby: bool = Field(True, description="Packed head processes keep a forked warm standby worker that "
                               "takes over at once when the serving one dies (heads/standby.py): a crash fails "
                               "no request; the standby shares the imports' memory copy-on-write")
    train_missing: bool = Field(True, description="Train heads that have no artifact yet, before serving")
    scan_interval_s: float = Field(2.0, gt=0, description="How often new head configs are looked for")
    retrain_every_s: float = Field(0.0, ge=0, description="Run `polyhead retrain --challengers-only` this often "
                                   "(seconds; e.g. 86400 = daily): heads whose `retraining:` policy is due get a new "
                                   "challenger, never a champion; runs never overlap; log in var_dir/logs/retrain.log. "
                                   "0 = off (the default)")

    @property
    def state_file(self) -> Path:
        return self.var_dir / "stack.json"


@dataclass
class Child:
    name: str
    kind: str  # embedder | head | gateway
    argv: list[str]
    port: int
    url: str
    log: Path
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    extra: dict = field(default_factory=dict)

    def start(self, env: dict) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")
        # Own process group: Ctrl-C in the terminal reaches only the supervisor, which stops children in order.
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        out.close()
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10) -> None:
        if self.alive():
            terminate(self.proc, timeout_s)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


class Stack:
    def __init__(self, settings: StackSettings, console):
        self.s = settings
        self.console = console
        self.children: dict[str, Child] = {}
        self.stopping = False
        self.ports_file = settings.var_dir / "ports.json"
        self.routes_file = settings.var_dir / "routes.yaml"
        self.db_url = settings.db_url or f"sqlite:///{(settings.var_dir / 'inference.db').resolve()}"
        self.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "POLYHEAD_EMBEDDER_TARGET": self.embedder_target}
        self.retrain = RetrainSchedule(self.retrain_argv(), settings.retrain_every_s,
                                       settings.var_dir / "logs" / "retrain.log", console, env=self.env)

    @property
    def embedder_target(self) -> str:
        return replica_target(self.s.host, [self.s.embedder_port + i for i in range(self.s.embedder_replicas)])

    def _l2_args(self) -> list[str]:
        return ["--l2-cache-url", self.s.l2_cache_url] if self.s.l2_cache_url else []

    # -- children ----------------------------------------------------------------------------------
    def _embedder(self, replica: int = 0) -> Child:
        port = self.s.embedder_port + replica
        metrics_port = self.s.embedder_metrics_port + replica if self.s.embedder_metrics_port else 0
        argv = _cli("embedder", "serve", "--host", self.s.host, "--port", str(port),
                    "--metrics-port", str(metrics_port), *self._l2_args())
        suffix = f"-{replica + 1}" if replica else ""
        return Child(f"embedder{suffix}", "embedder", argv, port, f"{self.s.host}:{port}",
                     self.s.var_dir / "logs" / f"embedder{suffix}.log")

    def _head(self, name: str, config: Path, port: int) -> Child:
        """One head in its own process, served at the process's root."""
        argv = _cli("head", "serve", str(config), *self._head_flags(port))
        return Child(f"head:{name}", "head", argv, port, f"http://{self.s.host}:{port}",
                     self.s.var_dir / "logs" / f"head-{name}.log", extra={"heads": [name], "packed": False})

    def _pool(self, pool: str, names: list[str], port: int) -> Child:
        """Several heads packed in one process, each at /heads/<name>."""
        argv = _cli("head", "serve", "--heads", ",".join(names), "--heads-dir", str(self.s.heads_dir),
                    "--pool-name", pool, *self._head_flags(port), *(["--standby"] if self.s.head_standby else []))
        return Child(f"heads:{pool}", "head", argv, port, f"http://{self.s.host}:{port}",
                     self.s.var_dir / "logs" / f"heads-{pool}.log", extra={"heads": list(names), "packed": True})

    def _head_flags(self, port: int) -> list[str]:
        return ["--host", self.s.host, "--port", str(port), "--models-dir", str(self.s.models_dir),
                "--embedder-target", self.embedder_target, "--db-url", self.db_url,
                "--spool-dir", str(self.s.var_dir / "spool"), *self._l2_args(), *self._admin_args()]

    def _admin_args(self) -> list[str]:
        """Every head and the gateway get the same admin token file (made once, 0600, in var_dir)."""
        return ["--admin-token-file", str(ensure_admin_token(self.s.var_dir / "admin-token"))]

    def head_routes(self) -> dict[str, str]:
        """{model: URL} for the gateway: a head's own process, or its path in a packed one."""
        from heads.api import packed_path

        routes = {}
        for child in self.children.values():
            if child.kind == "head":
                for name in child.extra["heads"]:
                    routes[name] = child.url + (packed_path(name) if child.extra["packed"] else "")
        return routes

    def served_heads(self) -> set[str]:
        return {n for c in self.children.values() if c.kind == "head" for n in c.extra["heads"]}

    def _gateway(self) -> Child:
        argv = _cli("gateway", "serve", "--host", self.s.host, "--port", str(self.s.gateway_port),
                    "--heads-dir", str(self.s.heads_dir), "--routes-file", str(self.routes_file),
                    "--embedder-target", self.embedder_target, "--db-url", self.db_url, *self._admin_args())
        return Child("gateway", "gateway", argv, self.s.gateway_port, f"http://{self.s.host}:{self.s.gateway_port}",
                     self.s.var_dir / "logs" / "gateway.log")

    def retrain_argv(self) -> list[str]:
        """The scheduled run: the same `polyhead retrain` an operator types, against this stack."""
        return _cli("retrain", "--challengers-only", "--heads-dir", str(self.s.heads_dir),
                    "--models-dir", str(self.s.models_dir), "--embedder-target", self.embedder_target,
                    "--db-url", self.db_url, "--gateway", f"http://{self.s.host}:{self.s.gateway_port}")

    def _launch(self, child: Child) -> None:
        self.children[child.name] = child
        child.start(self.env)
        self._write_state()

    # -- readiness ---------------------------------------------------------------------------------
    def _wait_embedder(self, child: Child, timeout_s: float = 600) -> None:
        from embedder.client import EmbedderClient

        with EmbedderClient(child.url) as client:
            deadline = time.monotonic() + timeout_s
            while client.health() != "SERVING":
                if not child.alive():
                    raise RuntimeError(f"the embedder exited ({child.proc.returncode}); see {child.log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the embedder was not ready after {timeout_s:.0f}s; see {child.log}")
                time.sleep(0.25)

    def _wait_http(self, child: Child, path: str, timeout_s: float = 60) -> bool:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and child.alive():
            try:
                if httpx.get(child.url + path, timeout=1).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        return False

    # -- heads -------------------------------------------------------------------------------------
    def _configs(self) -> dict:
        from heads.config import HeadConfigError, load_head_config

        found = {}
        for path in sorted(Path(self.s.heads_dir).glob("*.yaml")):
            try:
                cfg = load_head_config(path)
            except HeadConfigError as err:
                self.console.print(f"[yellow]skipping {path}: {err}[/yellow]")
                continue
            found[cfg.name] = cfg
        return found

    def _ensure_trained(self, configs: dict) -> dict:
        from embedder.client import EmbedderClient, feature_sets
        from embedder.feature_sets import AUTO
        from heads.artifacts import list_versions
        from heads.roles import serve_fingerprint
        from heads.training.run import train_from_config

        servable = {}
        with EmbedderClient(self.embedder_target, timeout_s=30) as client:
            served = feature_sets(client.info())
        # A head counts as missing unless a version of it was trained on the encoder now served (each
        # backend+precision has its own fingerprint): switching backends trains for the new one once.
        def encoder_of(cfg) -> set[str]:  # the fingerprints a version for the served encoder may carry
            names = served if cfg.feature_set == AUTO else [cfg.feature_set] if cfg.feature_set in served else []
            return {served[n].fingerprint for n in names}

        missing = [c for c in configs.values() if not list_versions(self.s.models_dir, c.name) or (
            encoder_of(c) and not serve_fingerprint(self.s.models_dir, c.name, encoder_of(c)))]
        if missing and self.s.train_missing:
            self.console.print(f"training {len(missing)} head(s) with no artifact for the served encoder yet")
            with EmbedderClient(self.embedder_target, timeout_s=120) as client:
                for cfg in missing:
                    if not cfg.data_available():
                        self.console.print(f"[yellow]{cfg.name}: no data at {cfg.resolve(cfg.dataset.train)}; skipped[/yellow]")
                        continue
                    report = train_from_config(cfg, self.s.models_dir, client, console=self.console,
                                               promote=True)  # a head's first version serves
                    acc = report.metrics.get("test", {}).get("accuracy")
                    self.console.print(f"  {cfg.name}: version {report.version}"
                                       + (f", test accuracy {acc:.3f}" if acc is not None else ""))
        for name, cfg in configs.items():
            if list_versions(self.s.models_dir, name):
                servable[name] = cfg
        return servable

    def _ports(self, keys) -> dict[str, int]:
        """A port per head process, kept across runs (key: the head's name, or `heads:<pool>`)."""
        ports = json.loads(self.ports_file.read_text()) if self.ports_file.exists() else {}
        taken = set(ports.values())
        for key in keys:
            if key not in ports:
                port = self.s.head_base_port
                while port in taken:
                    port += 1
                ports[key] = port
                taken.add(port)
        self.ports_file.write_text(json.dumps(ports, indent=1))
        return ports

    def plan(self, configs: dict) -> list[Child]:
        """The head processes for heads not served yet: one per head, or pools of heads_per_process
        (0: all of them in one); a head added later joins a new pool, the running ones keep serving."""
        names = sorted(n for n in configs if n not in self.served_heads())
        if not names:
            return []
        if self.s.heads_per_process == 1:
            ports = self._ports(names)
            return [self._head(n, configs[n].source, ports[n]) for n in names]
        size = self.s.heads_per_process or len(names)
        used = [int(c.name.rsplit("-", 1)[1]) for c in self.children.values() if c.name.startswith("heads:pool-")]
        first = max(used, default=0) + 1
        pools = {f"pool-{first + i}": names[j:j + size] for i, j in enumerate(range(0, len(names), size))}
        ports = self._ports(f"heads:{p}" for p in pools)
        return [self._pool(p, members, ports[f"heads:{p}"]) for p, members in pools.items()]

    def _start_heads(self, configs: dict) -> list[Child]:
        new = self.plan(configs)
        for child in new:
            self._launch(child)
        tmp = self.routes_file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.head_routes(), sort_keys=True))
        os.replace(tmp, self.routes_file)  # the gateway polls it: never show half a file
        return new

    # -- state -------------------------------------------------------------------------------------
    def _write_state(self) -> None:
        state = {"pid": os.getpid(), "services": [
            {"name": c.name, "kind": c.kind, "port": c.port, "url": c.url, "pid": c.proc.pid if c.proc else None,
             "restarts": c.restarts, "log": str(c.log), **({"heads": c.extra["heads"]} if c.kind == "head" else {})}
            for c in self.children.values()]}
        self.s.state_file.write_text(json.dumps(state, indent=1))

    # -- main loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        self.s.var_dir.mkdir(parents=True, exist_ok=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            started = time.monotonic()
            self.console.print(f"starting the embedder on {self.embedder_target} "
                               "(exports the bundled all-MiniLM-L6-v2 on first run)")
            # The first replica exports the bundled model if needed; the others start once it exists.
            self._launch(self._embedder())
            self._wait_embedder(self.children["embedder"])
            replicas = [self._embedder(i) for i in range(1, self.s.embedder_replicas)]
            for child in replicas:
                self._launch(child)
            for child in replicas:
                self._wait_embedder(child)
            configs = self._ensure_trained(self._configs())
            heads = self._start_heads(configs)
            self._launch(self._gateway())
            for child in heads:
                if not self._wait_http(child, "/healthz"):
                    self.console.print(f"[yellow]{child.name} did not start; see {child.log}[/yellow]")
            if not self._wait_http(self.children["gateway"], "/readyz"):
                raise RuntimeError(f"the gateway did not become ready; see {self.children['gateway'].log}")
            self._banner(sorted(configs), time.monotonic() - started)
            self._supervise()
        except RuntimeError as err:
            self.console.print(f"[red]{err}[/red]")
            return 1
        finally:
            self.shutdown()
        return 0

    def _banner(self, names: list[str], elapsed: float) -> None:
        gw = self.children["gateway"].url
        example = names[0] if names else "NAME"
        processes = sum(1 for c in self.children.values() if c.kind == "head")
        self.console.print(f"\n[bold green]polyhead is up[/bold green] in {elapsed:.1f}s: embedder + {len(names)} "
                           f"heads in {processes} head process(es) + gateway\n  console: {gw}/ui   (models, playground, dashboards)\n"
                           f"  gateway: {gw}   (OpenAPI docs: {gw}/docs)\n  models:  {', '.join(names)}\n"
                           f"  try:     curl -s {gw}/v1/models/{example}/predict -H 'content-type: application/json' "
                           f"-d '{{\"text\": \"my card was charged twice\"}}'\n  status:  polyhead status    stop: Ctrl-C\n")

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def _supervise(self) -> None:
        last_scan = time.monotonic()
        while not self.stopping:
            time.sleep(0.2)
            now = time.monotonic()
            for child in list(self.children.values()):
                if child.alive() or self.stopping:
                    continue
                if child.next_start == 0.0:
                    # Backoff grows with quick crashes and resets after a minute of healthy running.
                    quick = now - child.started_at < 60
                    child.restarts += 1
                    delay = min(RESTART_BACKOFF_MAX_S, 2 ** min(child.restarts - 1, 5)) if quick else 1.0
                    child.next_start = now + delay
                    self.console.print(f"[yellow]{child.name} exited ({child.proc.returncode}); "
                                       f"restarting in {delay:.0f}s (see {child.log})[/yellow]")
                elif now >= child.next_start:
                    child.next_start = 0.0
                    child.start(self.env)
                    self._write_state()
            if now - last_scan >= self.s.scan_interval_s:
                last_scan = now
                self._pick_up_new_heads()
            self.retrain.tick(now)

    def _pick_up_new_heads(self) -> None:
        configs = self._configs()
        new = {n: c for n, c in configs.items() if n not in self.served_heads()}
        if not new:
            return
        self.console.print(f"new head config(s): {', '.join(sorted(new))}")
        try:
            ready = self._ensure_trained(new)
        except Exception as err:  # noqa: BLE001 - a bad new head must not take the running stack down
            self.console.print(f"[red]could not train {', '.join(sorted(new))}: {err}[/red]")
            return
        for child in self._start_heads(ready):
            self.console.print(f"  started {child.name} on {child.url}")

    def shutdown(self) -> None:
        self.retrain.stop()
        order = (["gateway"] + [n for n, c in self.children.items() if c.kind == "head"]
                 + [n for n, c in self.children.items() if c.kind == "embedder"])
        for name in order:
            child = self.children.get(name)
            if child and child.alive():
                child.proc.terminate()
        for name in order:
            child = self.children.get(name)
            if child:
                child.stop(timeout_s=15)
        if self.s.state_file.exists():
            self.s.state_file.unlink()
        self.console.print("polyhead stopped")


def ensure_admin_token(path: Path) -> Path:
    """The stack's admin token (Bearer of /admin/* on the gateway and every head): kept across runs,
    readable by its owner only. `polyhead` commands that call admin routes read it from here."""
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another `polyhead up` made it first
            return path
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path


def replica_target(host: str, ports: list[int]) -> str:
    """One address, or gRPC's `ipv4:a:p1,a:p2` list, which the clients balance round-robin."""
    if len(ports) == 1:
        return f"{host}:{ports[0]}"
    import ipaddress
    import socket

    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = ipaddress.ip_address(socket.gethostbyname(host))
    if ip.version == 6:
        return "ipv6:" + ",".join(f"[{ip}]:{p}" for p in ports)
    return "ipv4:" + ",".join(f"{ip}:{p}" for p in ports)


def status(settings: StackSettings) -> list[dict]:
    """Each service of a running `polyhead up`: port, pid, health, version."""
    if not settings.state_file.exists():
        return []
    state = json.loads(settings.state_file.read_text())
    import httpx

    rows = []
    for svc in state["services"]:
        alive = svc["pid"] is not None and Path(f"/proc/{svc['pid']}").exists()
        row = {**svc, "alive": alive, "health": "down", "version": ""}
        if svc["kind"] == "embedder":
            from embedder.client import EmbedderClient, RetryPolicy

            with EmbedderClient(svc["url"], retry=RetryPolicy(max_attempts=1)) as client:
                row["health"] = client.health(timeout_s=1.0)
                if row["health"] == "SERVING":
                    info = client.info(timeout_s=1.0)
                    row["version"] = f"{info.model} {info.fingerprint}"
        else:
            try:
                r = httpx.get(svc["url"] + "/readyz", timeout=1.0)
                row["health"] = "ready" if r.status_code == 200 else "not ready"
                if svc["kind"] == "head" and svc["name"].startswith("heads:"):  # a packed process: its heads
                    heads = r.json().get("heads", {})
                    row["health"] = f"{sum(h['ready'] for h in heads.values())}/{len(heads)} heads ready"
                    row["version"] = ", ".join(svc.get("heads", []))
                elif svc["kind"] == "head":
                    from heads.api import HeadInfo

                    info = HeadInfo.model_validate_json(httpx.get(svc["url"] + "/info", timeout=1.0).content)
                    row["version"] = info.version or ""
            except (httpx.HTTPError, ValueError):  # ValueError: pydantic's, an answer that is not a head's /info
                pass
        rows.append(row)
    return rows
