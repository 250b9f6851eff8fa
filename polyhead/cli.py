"""The `polyhead` command line. Service modules are imported lazily: `polyhead embed` must not
pay for (or even have) TensorFlow."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(help="polyhead: one embedder, many cheap classifier heads.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
embedder_app = typer.Typer(help="The embedder service.", no_args_is_help=True)
app.add_typer(embedder_app, name="embedder")
head_app = typer.Typer(help="Classifier head services.", no_args_is_help=True)
app.add_typer(head_app, name="head")
gateway_app = typer.Typer(help="The gateway.", no_args_is_help=True)
app.add_typer(gateway_app, name="gateway")
keys_app = typer.Typer(help="Gateway API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML settings file (section per service)", exists=True)


@embedder_app.command("serve")
def embedder_serve(
    config: Optional[Path] = ConfigOpt,
    host: Optional[str] = typer.Option(None, help="Listen address"),
    port: Optional[int] = typer.Option(None, help="gRPC port"),
    metrics_port: Optional[int] = typer.Option(None, help="Prometheus port (0 disables)"),
    model_handle: Optional[str] = typer.Option(None, help="TF-Hub handle: URL or SavedModel directory"),
    cache_max_entries: Optional[int] = typer.Option(None, help="LRU cache size in entries (0 disables)"),
    max_batch_size: Optional[int] = typer.Option(None, help="Texts per model batch"),
    max_wait_ms: Optional[float] = typer.Option(None, help="How long a batch waits for company"),
    max_queue_size: Optional[int] = typer.Option(None, help="Queued texts before RESOURCE_EXHAUSTED"),
    batch_window: Optional[int] = typer.Option(None, help="Batches' worth of queue searched for similar lengths"),
    split_overhead_chars: Optional[int] = typer.Option(None, help="Cut a batch by length when it saves more "
                                                       "padding than this (0 = never)"),
    onednn: Optional[bool] = typer.Option(None, "--onednn/--no-onednn", help="TensorFlow's oneDNN CPU kernels"),
    intra_op_threads: Optional[int] = typer.Option(None, help="TensorFlow intra-op threads (0 = auto)"),
    inter_op_threads: Optional[int] = typer.Option(None, help="TensorFlow inter-op threads (0 = auto)"),
    log_level: Optional[str] = typer.Option(None),
):
    """Serve the embedder over gRPC (health + reflection included)."""
    overrides = {k: v for k, v in locals().items() if k != "config"}
    from embedder.servable import configure_tf_logging

    configure_tf_logging()
    from embedder.grpc_server import serve
    from embedder.settings import EmbedderSettings
    from polyhead.logging import configure_logging

    settings = EmbedderSettings.load(config, **overrides)
    configure_logging(settings.log_level, settings.json_logs)
    asyncio.run(serve(settings))


@app.command("embed")
def embed(
    texts: List[str] = typer.Argument(..., help="Texts to embed"),
    target: str = typer.Option("127.0.0.1:50051", envvar="POLYHEAD_EMBEDDER_TARGET", help="Embedder address"),
    bypass_cache: bool = typer.Option(False, help="Skip the server's cache"),
    full: bool = typer.Option(False, help="Print whole vectors, not a preview"),
):
    """Embed TEXT... with a running embedder and print one JSON object per text."""
    from embedder.client import EmbedderClient
    from polyhead.errors import PolyheadError

    with EmbedderClient(target, retry=_no_retry()) as client:
        try:
            result = client.embed(texts, bypass_cache=bypass_cache)
        except PolyheadError as err:
            typer.echo(f"error: {err.message}", err=True)
            raise typer.Exit(2)
    for text, vector, cached, truncated in zip(texts, result.vectors, result.cached, result.truncated):
        values = vector.tolist() if full else [round(x, 5) for x in vector[:8].tolist()]
        typer.echo(json.dumps({"text": text, "dim": len(vector), "cached": cached, "truncated": truncated,
                               "fingerprint": result.fingerprint, "vector" if full else "vector_head": values},
                              ensure_ascii=False))


def _no_retry():
    from embedder.client import RetryPolicy

    return RetryPolicy(max_attempts=2)


@app.command("export-model")
def export_model(
    output: Path = typer.Option(None, help="SavedModel directory (default: the embedder's model_handle)"),
    max_seq_length: int = typer.Option(128, help="Tokens per text; longer texts are truncated"),
    force: bool = typer.Option(False, help="Export even if the directory already holds a model"),
):
    """Export the bundled all-MiniLM-L6-v2 into a TF-Hub-format SavedModel."""
    from embedder.servable import configure_tf_logging

    configure_tf_logging()
    from embedder.export import export_minilm
    from embedder.fingerprint import fingerprint_saved_model
    from embedder.settings import EmbedderSettings

    output = output or Path(EmbedderSettings.load().model_handle)
    if (output / "saved_model.pb").exists() and not force:
        typer.echo(f"{output} already holds a SavedModel (use --force to re-export)")
    else:
        export_minilm(output, max_seq_length=max_seq_length)
    typer.echo(json.dumps({"path": str(output), "fingerprint": fingerprint_saved_model(output)}))


@head_app.command("serve")
def head_serve(
    head_config: Path = typer.Argument(..., help="configs/heads/<name>.yaml", exists=True, dir_okay=False),
    config: Optional[Path] = ConfigOpt,
    host: Optional[str] = typer.Option(None),
    port: Optional[int] = typer.Option(None),
    models_dir: Optional[Path] = typer.Option(None, help="Artifacts folder (default models/)"),
    embedder_target: Optional[str] = typer.Option(None, help="Embedder gRPC address"),
    db_url: Optional[str] = typer.Option(None, help="Inference DB URL (SQLAlchemy)"),
    spool_dir: Optional[Path] = typer.Option(None),
    version_poll_s: Optional[float] = typer.Option(None),
    log_level: Optional[str] = typer.Option(None),
):
    """Serve one head (numpy only: this process never imports TensorFlow)."""
    overrides = {k: v for k, v in locals().items() if k not in ("config", "head_config")}
    from heads.http_server import serve
    from heads.settings import HeadSettings
    from polyhead.logging import configure_logging

    settings = HeadSettings.load(config, config=head_config, **overrides)
    configure_logging(settings.log_level, settings.json_logs)
    serve(settings)


@gateway_app.command("serve")
def gateway_serve(
    config: Optional[Path] = ConfigOpt,
    host: Optional[str] = typer.Option(None),
    port: Optional[int] = typer.Option(None),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default 1)"),
    heads_dir: Optional[Path] = typer.Option(None, help="Head configs (default configs/heads)"),
    routes_file: Optional[Path] = typer.Option(None, help="YAML {name: url} overriding addresses"),
    head_url_template: Optional[str] = typer.Option(None, help="e.g. http://head-{name}:8000"),
    embedder_target: Optional[str] = typer.Option(None),
    api_keys_file: Optional[Path] = typer.Option(None, help="YAML list of hashed keys (see `polyhead keys create`)"),
    rate_limit_per_s: Optional[float] = typer.Option(None),
    rate_limit_burst: Optional[int] = typer.Option(None),
    max_body_bytes: Optional[int] = typer.Option(None),
    log_level: Optional[str] = typer.Option(None),
):
    """Serve the gateway: route by model name, OpenAI-style /v1/embeddings."""
    overrides = {k: v for k, v in locals().items() if k != "config"}
    from gateway.http_server import serve
    from gateway.settings import GatewaySettings
    from polyhead.logging import configure_logging

    settings = GatewaySettings.load(config, **overrides)
    configure_logging(settings.log_level, settings.json_logs)
    serve(settings)


@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="Who the key is for"),
    models: str = typer.Option("*", help="Comma-separated models the key may call; * = all"),
    keys_file: Optional[Path] = typer.Option(None, help="Append the hashed entry to this YAML file"),
):
    """Make an API key: prints the key once; only its hash is stored."""
    import yaml

    from gateway.auth import new_key

    key, digest = new_key()
    entry = {"name": name, "sha256": digest, "models": [m.strip() for m in models.split(",") if m.strip()]}
    if keys_file:
        existing = (yaml.safe_load(keys_file.read_text()) if keys_file.exists() else None) or []
        keys_file.write_text(yaml.safe_dump(existing + [entry], sort_keys=False))
    typer.echo(f"key (shown once, give it to {name}): {key}")
    typer.echo(yaml.safe_dump([entry], sort_keys=False).rstrip())


@app.command("train")
def train(
    head_configs: List[Path] = typer.Argument(..., help="configs/heads/<name>.yaml (one or more)", exists=True),
    models_dir: Path = typer.Option(Path("models"), help="Where versioned artifacts are written"),
    embedder_target: str = typer.Option("127.0.0.1:50051", envvar="POLYHEAD_EMBEDDER_TARGET"),
):
    """Train heads from their configs; embeddings come from the running embedder (and its cache)."""
    from rich.console import Console

    from embedder.client import EmbedderClient
    from heads.config import HeadConfigError, load_head_config
    from heads.trainer import train_from_config
    from polyhead.errors import PolyheadError

    console = Console(stderr=True)
    try:
        configs = [load_head_config(p) for p in head_configs]
    except HeadConfigError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2)
    with EmbedderClient(embedder_target, timeout_s=120) as client:
        for cfg in configs:
            try:
                report = train_from_config(cfg, models_dir, client, console=console)
            except PolyheadError as err:
                console.print(f"[red]{cfg.name}: {err.message}[/red]")
                raise typer.Exit(2)
            test = report.metrics.get("test", {})
            typer.echo(json.dumps({"head": report.name, "version": report.version, "path": str(report.path),
                                   "train_time_s": round(report.train_time_s, 2),
                                   "test_accuracy": test.get("accuracy"), "test_f1_weighted": test.get("f1_weighted")}))


@app.command("batch")
def batch(
    input_path: Path = typer.Argument(..., help="INPUT.jsonl or INPUT.csv", exists=True, dir_okay=False),
    model: str = typer.Option(..., "--model", "-m", help="Model (head) name"),
    output: Path = typer.Option(..., "--output", "-o", help="Output JSONL (appended to; re-run to resume)"),
    gateway: str = typer.Option("http://127.0.0.1:8000", envvar="POLYHEAD_GATEWAY_URL"),
    direct: bool = typer.Option(False, "--direct", help="No gateway or head: embed with the embedder and apply "
                                "the head's artifact in this process (predictions are not logged to the inference DB)"),
    embedder_target: str = typer.Option("127.0.0.1:50051", help="With --direct: the embedder's gRPC address"),
    heads_dir: Path = typer.Option(Path("configs/heads"), help="With --direct: where <model>.yaml is"),
    models_dir: Path = typer.Option(Path("models"), help="With --direct: the trained artifacts"),
    version: Optional[str] = typer.Option(None, help="With --direct: a version (default: the config's, usually latest)"),
    text_field: str = typer.Option("text"),
    id_field: Optional[str] = typer.Option(None, help="Copy this input field into each output row"),
    chunk_size: int = typer.Option(32, min=1, max=4096),
    concurrency: int = typer.Option(4, min=1, max=256),
    api_key: Optional[str] = typer.Option(None, envvar="POLYHEAD_API_KEY"),
):
    """Classify a whole file through the gateway (or --direct): progress bar, bounded concurrency, resumable."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from gateway.batch import DirectPredictor, GatewayPredictor, classify_file, done_rows, read_rows
    from polyhead.errors import PolyheadError

    total = sum(1 for _ in read_rows(input_path, text_field))
    already = len(done_rows(output))

    async def run(advance):
        if direct:
            predictor = DirectPredictor(embedder_target, models_dir, heads_dir / f"{model}.yaml", version=version)
        else:
            predictor = GatewayPredictor(gateway, model, api_key=api_key)
        try:
            return await classify_file(predictor, input_path, output, text_field=text_field, id_field=id_field,
                                       chunk_size=chunk_size, concurrency=concurrency, on_progress=advance)
        finally:
            await predictor.aclose()

    with Progress(TextColumn(f"[{model}]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as progress:
        task = progress.add_task("classify", total=total, completed=already)
        try:
            report = asyncio.run(run(lambda n: progress.advance(task, n)))
        except (ValueError, RuntimeError) as err:  # a bad row, a head config error, a refused chunk
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2)
        except PolyheadError as err:
            typer.echo(f"error: {err.message}", err=True)
            raise typer.Exit(2)
    typer.echo(json.dumps({"rows": report.rows_total, "already_done": report.rows_done_before,
                           "classified": report.rows_classified, "seconds": round(report.seconds, 2),
                           "rows_per_s": round(report.rows_per_s, 1), "output": str(output)}))


StackConfigOpt = typer.Option(None, "--config", "-c", help="YAML settings file (section `stack:`)", exists=True)


@app.command("up")
def up(
    config: Optional[Path] = StackConfigOpt,
    heads_dir: Optional[Path] = typer.Option(None, help="Head configs to serve (default configs/heads)"),
    models_dir: Optional[Path] = typer.Option(None, help="Artifacts (default models/)"),
    var_dir: Optional[Path] = typer.Option(None, help="Logs, inference DB, state (default var/)"),
    gateway_port: Optional[int] = typer.Option(None),
    embedder_port: Optional[int] = typer.Option(None),
    embedder_metrics_port: Optional[int] = typer.Option(None),
    head_base_port: Optional[int] = typer.Option(None),
    db_url: Optional[str] = typer.Option(None, help="Inference DB (default SQLite in var/)"),
):
    """Run the whole stack: embedder, every configured head, gateway (Ctrl-C stops all)."""
    overrides = {k: v for k, v in locals().items() if k != "config"}
    from rich.console import Console

    from polyhead.stack import Stack, StackSettings

    settings = StackSettings.load(config, **overrides)
    raise typer.Exit(Stack(settings, Console()).run())


@app.command("status")
def stack_status(
    config: Optional[Path] = StackConfigOpt,
    var_dir: Optional[Path] = typer.Option(None, help="Where `polyhead up` keeps its state (default var/)"),
):
    """Show each service of a running `polyhead up`: port, health, version."""
    from rich.console import Console
    from rich.table import Table

    from polyhead.stack import StackSettings, status

    rows = status(StackSettings.load(config, var_dir=var_dir))
    if not rows:
        typer.echo("polyhead is not running here (no stack state found)")
        raise typer.Exit(1)
    table = Table("service", "port", "pid", "health", "version", "restarts")
    for r in rows:
        table.add_row(r["name"], str(r["port"]), f"{r['pid']}" + ("" if r["alive"] else " (dead)"), r["health"],
                      r["version"], str(r["restarts"]))
    Console().print(table)


deploy_app = typer.Typer(help="Deployment files: docker-compose.yml, deploy/prometheus.yml, deploy/k8s/.",
                         no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("generate")
def deploy_generate(
    root: Path = typer.Option(Path("."), help="Project root: reads configs/heads, writes the files there",
                              exists=True, file_okay=False),
    check: bool = typer.Option(False, "--check", help="Write nothing; exit 1 if any generated file is stale"),
):
    """(Re)generate compose, Prometheus and Kubernetes files from configs/heads/*.yaml."""
    from heads.config import HeadConfigError
    from polyhead.deploy import stale, write

    try:
        changed = stale(root) if check else write(root)
    except HeadConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    for rel in changed:
        typer.echo(f"{'stale' if check else 'wrote'}: {rel}")
    if check and changed:
        raise typer.Exit(1)
    if not changed:
        typer.echo("deployment files are up to date")


def main() -> None:  # console-script entry point
    sys.exit(app())


if __name__ == "__main__":
    main()
