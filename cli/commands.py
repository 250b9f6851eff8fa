"""The `polyhead` commands (typer; entry point: cli/main.py). Service modules are imported
lazily: `polyhead embed` must not pay for (or even have) TensorFlow."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

# Settings classes are light (pydantic only): importing them here lets each `serve` command's
# options be generated from the one declaration of every setting.
from embedder.settings import EmbedderSettings
from gateway.settings import GatewaySettings
from heads import serve_cli
from polyhead.settings import (
    DEFAULT_DB_URL,
    DEFAULT_EMBEDDER_TARGET,
    DEFAULT_GATEWAY_URL,
    DEFAULT_HEADS_DIR,
    DEFAULT_MODELS_DIR,
)
from cli.settings_cli import settings_options
from cli.stack import StackSettings

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

@embedder_app.command("serve")
@settings_options(EmbedderSettings)
def embedder_serve(settings: EmbedderSettings):
    """Serve the embedder over gRPC (health + reflection included)."""
    from embedder.servable import configure_tf_logging

    configure_tf_logging()
    from embedder.grpc_server import serve
    from polyhead.logging import configure_logging

    configure_logging(settings.log_level, settings.json_logs)
    asyncio.run(serve(settings))


@app.command("embed")
def embed(
    texts: List[str] = typer.Argument(..., help="Texts to embed"),
    target: str = typer.Option(DEFAULT_EMBEDDER_TARGET, envvar="POLYHEAD_EMBEDDER_TARGET", help="Embedder address"),
    bypass_cache: bool = typer.Option(False, help="Skip the server's cache"),
    full: bool = typer.Option(False, help="Print whole vectors, not a preview"),
    feature_set: str = typer.Option("default", help="Embedder feature set: default, or e.g. all6 (every layer)"),
):
    """Embed TEXT... with a running embedder and print one JSON object per text."""
    from embedder.client import EmbedderClient
    from polyhead.errors import PolyheadError

    with EmbedderClient(target, retry=_no_retry()) as client:
        try:
            result = client.embed(texts, bypass_cache=bypass_cache, feature_set=feature_set)
        except PolyheadError as err:
            typer.echo(f"error: {err.message}", err=True)
            raise typer.Exit(2) from None
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
    output = output or Path(EmbedderSettings.load().model_handle)
    if (output / "saved_model.pb").exists() and not force:
        typer.echo(f"{output} already holds a SavedModel (use --force to re-export)")
    else:
        export_minilm(output, max_seq_length=max_seq_length)
    typer.echo(json.dumps({"path": str(output), "fingerprint": fingerprint_saved_model(output)}))


@head_app.command("serve", add_help_option=False,
                  context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def head_serve(ctx: typer.Context):
    """Serve one head, or several packed in one process (numpy only: never imports TensorFlow).

    One entry, heads/serve_cli.py (argparse, flags from HeadSettings): cli/main.py goes there before
    loading typer; this command only lists it under `polyhead head --help` and forwards to it."""
    raise typer.Exit(serve_cli.main(list(ctx.args)))


@gateway_app.command("serve")
@settings_options(GatewaySettings)
def gateway_serve(settings: GatewaySettings):
    """Serve the gateway: route by model name, OpenAI-style /v1/embeddings."""
    from gateway.http_server import serve
    from polyhead.logging import configure_logging

    configure_logging(settings.log_level, settings.json_logs)
    serve(settings)


@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="Who the key is for"),
    models: str = typer.Option("*", help="Comma-separated models the key may call; * = all"),
    keys_file: Optional[Path] = typer.Option(None, help="Append the hashed entry to this YAML file"),
    role: List[str] = typer.Option([], "--role", help="labeller: may give feedback on any prediction of its "
                                   "models, not only its own (repeatable)"),
    embeddings: Optional[bool] = typer.Option(None, "--embeddings/--no-embeddings", help="May call /v1/embeddings "
                                              "(default: only a key allowed on every model)"),
):
    """Make an API key: prints the key once; only its hash is stored."""
    import yaml

    from gateway.auth import new_key

    key, digest = new_key()
    from gateway.settings import ApiKey

    entry = {"name": name, "sha256": digest, "models": [m.strip() for m in models.split(",") if m.strip()]}
    if role:
        entry["roles"] = sorted(set(role))
    if embeddings is not None:
        entry["embeddings"] = embeddings
    try:
        ApiKey.model_validate(entry)  # an unknown role fails here, not when the gateway reads the file
    except ValueError as exc:
        typer.echo(f"invalid key: {exc}", err=True)
        raise typer.Exit(2) from None
    if keys_file:
        existing = (yaml.safe_load(keys_file.read_text()) if keys_file.exists() else None) or []
        keys_file.write_text(yaml.safe_dump(existing + [entry], sort_keys=False))
    typer.echo(f"key (shown once, give it to {name}): {key}")
    typer.echo(yaml.safe_dump([entry], sort_keys=False).rstrip())


@app.command("train")
def train(
    head_configs: List[Path] = typer.Argument(..., help="configs/heads/<name>.yaml (one or more)", exists=True),
    models_dir: Path = typer.Option(DEFAULT_MODELS_DIR, help="Where versioned artifacts are written"),
    embedder_target: str = typer.Option(DEFAULT_EMBEDDER_TARGET, envvar="POLYHEAD_EMBEDDER_TARGET"),
    with_feedback: bool = typer.Option(False, "--with-feedback", help="Add the feedback stored in the inference DB "
                                       "(text from the log) to the training data; redacted texts are skipped"),
    db_url: str = typer.Option(DEFAULT_DB_URL, envvar="POLYHEAD_HEAD_DB_URL", help="With --with-feedback: the "
                               "inference DB (SQLAlchemy URL)"),
    feedback_from: Optional[str] = typer.Option(None, "--feedback-from", help="With --with-feedback: trust only "
                                                "the feedback given by these API keys (comma-separated names; "
                                                "'anonymous' = given with keys off). Default: everybody's"),
    promote: bool = typer.Option(False, "--promote", help="Serve the new version at once (champion); without it a "
                                 "head's new version is a challenger, shadowed on live traffic until promoted "
                                 "(a head's first version is always its champion)"),
    with_pseudo_labels: bool = typer.Option(False, "--with-pseudo-labels", help="Self-training: add logged texts "
                                            "the served version is very sure of (threshold chosen on val, share "
                                            "capped, never in val/test); the result is a challenger (unless "
                                            "--promote)"),
    pseudo_precision: float = typer.Option(0.97, min=0.5, max=1.0, help="With --with-pseudo-labels: the val "
                                           "precision the threshold must reach"),
    pseudo_max_share: float = typer.Option(0.2, min=0.0, max=1.0, help="With --with-pseudo-labels: at most this "
                                           "share of the training split"),
    pseudo_min_support: int = typer.Option(30, min=1, help="With --with-pseudo-labels: val texts the threshold's "
                                           "precision must be measured on"),
):
    """Train heads from their configs; embeddings come from the running embedder (and its cache).

    The new version is a challenger (see `polyhead compare NAME`, `polyhead promote NAME`) unless --promote."""
    from rich.console import Console

    from embedder.client import EmbedderClient
    from heads.config import HeadConfigError, load_head_config
    from heads.training.pseudo_labels import PseudoLabelOptions
    from heads.training.run import train_from_config
    from polyhead.errors import PolyheadError

    console = Console(stderr=True)
    trusted = None if feedback_from is None else [k.strip() for k in feedback_from.split(",") if k.strip()]
    if trusted is not None and not with_feedback:
        console.print("[red]--feedback-from needs --with-feedback[/red]")
        raise typer.Exit(2)
    try:
        configs = [load_head_config(p) for p in head_configs]
    except HeadConfigError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
    with EmbedderClient(embedder_target, timeout_s=120) as client:
        for cfg in configs:
            try:
                pseudo = PseudoLabelOptions(db_url, target_precision=pseudo_precision, max_share=pseudo_max_share,
                                            min_support=pseudo_min_support) if with_pseudo_labels else None
                report = train_from_config(cfg, models_dir, client, console=console,
                                           feedback_db_url=db_url if with_feedback else None,
                                           feedback_from=trusted, promote=promote, pseudo_labels=pseudo)
            except PolyheadError as err:
                console.print(f"[red]{cfg.name}: {err.message}[/red]")
                raise typer.Exit(2) from None
            test = report.metrics.get("test", {})
            typer.echo(json.dumps({"head": report.name, "version": report.version, "role": report.role,
                                   "path": str(report.path),
                                   "train_time_s": round(report.train_time_s, 2),
                                   "test_accuracy": test.get("accuracy"), "test_f1_weighted": test.get("f1_weighted"),
                                   **({"feedback": report.feedback} if report.feedback is not None else {}),
                                   **({"pseudo_labels": report.metrics["pseudo_labels"]}
                                      if "pseudo_labels" in report.metrics else {})}))


@app.command("report")
def report(
    name: str = typer.Argument(..., help="Model (head) name"),
    since: Optional[str] = typer.Option(None, help="ISO 8601 start (default: 24 h before --until)"),
    until: Optional[str] = typer.Option(None, help="ISO 8601 end (default: now)"),
    bucket: str = typer.Option("hour", help="Timeline bucket: hour or day (UTC)"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (the API's body)"),
    gateway: str = typer.Option(DEFAULT_GATEWAY_URL, envvar="POLYHEAD_GATEWAY_URL", help="Ask this gateway"),
    db_url: Optional[str] = typer.Option(None, help="Read this inference DB directly instead of asking the gateway "
                                         "(no drift section: drift lives in the head)"),
    heads_dir: Path = typer.Option(DEFAULT_HEADS_DIR, help="With --db-url: the known heads"),
    api_key: Optional[str] = typer.Option(None, envvar="POLYHEAD_API_KEY"),
):
    """A head's production report: volume, labels, confidence, abstentions, latency, feedback accuracy, drift."""
    from polyhead.errors import PolyheadError
    from cli.report import from_db, from_gateway, print_report

    if bucket not in ("hour", "day"):
        typer.echo(f"error: --bucket must be hour or day, not {bucket!r}", err=True)
        raise typer.Exit(2)
    try:
        if db_url:
            body = from_db(db_url, name, since=since, until=until, bucket=bucket, heads_dir=heads_dir)
        else:
            body = from_gateway(gateway, name, since=since, until=until, bucket=bucket, api_key=api_key)
    except PolyheadError as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(body.model_dump_json(exclude_unset=True))  # as the gateway answers it
    else:
        print_report(body)


@app.command("review")
def review(
    name: str = typer.Argument(..., help="Model (head) name"),
    n: int = typer.Option(20, "--n", "-n", min=1, max=500, help="How many texts"),
    strategy: str = typer.Option("uncertain", help="uncertain, balanced, clustered, ood, diverse, new_label, random or "
                                  "disagree (challenger vs champion)"),
    score: str = typer.Option("margin", help="uncertain and balanced: margin (smallest first) or entropy (highest first)"),
    pool: Optional[int] = typer.Option(None, min=1, help="Distinct unlabelled texts to pick from (default 2000)"),
    seed: Optional[int] = typer.Option(None, min=0, help="random: a reproducible draw"),
    since: Optional[str] = typer.Option(None, help="Only texts logged from then (ISO 8601)"),
    until: Optional[str] = typer.Option(None, help="Only texts logged before then (ISO 8601)"),
    export: Optional[str] = typer.Option(None, help="Write the queue for a labelling tool: label-studio (task JSON), "
                                         "argilla (records, JSONL) or jsonl"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="With --export: the file (default: stdout)"),
    as_json: bool = typer.Option(False, "--json", help="Print the API's body as JSON"),
    gateway: str = typer.Option(DEFAULT_GATEWAY_URL, envvar="POLYHEAD_GATEWAY_URL"),
    api_key: Optional[str] = typer.Option(None, envvar="POLYHEAD_API_KEY"),
):
    """Logged predictions worth a label next (GET /v1/models/NAME/review); --export for Label Studio or Argilla."""
    from cli.review import FORMATS, fetch_queue
    from polyhead.errors import PolyheadError

    if export is not None and export not in FORMATS:
        typer.echo(f"error: --export must be one of {', '.join(FORMATS)}, not {export!r}", err=True)
        raise typer.Exit(2)
    try:
        queue = fetch_queue(gateway, name, api_key=api_key, n=n, strategy=strategy, score=score, pool=pool, seed=seed,
                            since=since, until=until)
    except PolyheadError as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(2) from None
    if export is not None:
        text = FORMATS[export].export(queue)
        if output is None:
            typer.echo(text, nl=False)
        else:
            output.write_text(text, encoding="utf-8")
            typer.echo(json.dumps({"model": name, "strategy": strategy, "format": export, "items": len(queue["items"]),
                                   "output": str(output)}), err=True)
    elif as_json:
        typer.echo(json.dumps(queue, ensure_ascii=False))
    else:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        table = Table("prediction_id", "index", "text", "predicted", "p", queue["score"] or "score",
                      title=f"{name}: {len(queue['items'])} to review ({strategy}, from {queue['pool']} texts)")
        for item in queue["items"]:
            table.add_row(item["prediction_id"], str(item["index"]), escape(item["text"][:80]), escape(item["predicted"]),
                          f"{item['probability']:.3f}", "-" if item["score"] is None else f"{item['score']:.3f}")
        Console().print(table)


@app.command("feedback")
def feedback(
    import_file: Path = typer.Option(..., "--import", exists=True, dir_okay=False,
                                     help="A labelled file: Label Studio's JSON export, Argilla records (JSONL) or "
                                          "plain JSONL (as `polyhead review --export` wrote it, with labels)"),
    file_format: str = typer.Option("auto", "--format", help="auto, label-studio, argilla or jsonl"),
    model: Optional[str] = typer.Option(None, help="The model (default: the one the rows name)"),
    gateway: str = typer.Option(DEFAULT_GATEWAY_URL, envvar="POLYHEAD_GATEWAY_URL"),
    api_key: Optional[str] = typer.Option(None, envvar="POLYHEAD_API_KEY"),
):
    """Store the labels of a labelled file as feedback: every row checked first, all or nothing, then a summary."""
    from cli.review import FORMATS, detect_format, import_feedback, read_labelled
    from polyhead.errors import PolyheadError

    if file_format != "auto" and file_format not in FORMATS:
        typer.echo(f"error: --format must be auto or one of {', '.join(FORMATS)}, not {file_format!r}", err=True)
        raise typer.Exit(2)
    fmt = detect_format(import_file) if file_format == "auto" else FORMATS[file_format]
    try:
        plan = read_labelled(import_file, fmt, model)
        summary = import_feedback(gateway, plan, api_key=api_key) if plan.items else {
            "model": plan.model, "format": plan.format, "rows": plan.rows, "stored": 0, "replaced": 0,
            "unanswered_skipped": plan.unanswered, "new_label": 0, "by_strategy": {}}
    except PolyheadError as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(summary))


_GATEWAY = typer.Option(DEFAULT_GATEWAY_URL, envvar="POLYHEAD_GATEWAY_URL", help="The gateway to ask")
_API_KEY = typer.Option(None, envvar="POLYHEAD_API_KEY", help="Gateway API key (promote/rollback: an admin key, '*')")


@app.command("compare")
def compare(
    name: str = typer.Argument(..., help="Model (head) name"),
    as_json: bool = typer.Option(False, "--json", help="Print the API's body"),
    gateway: str = _GATEWAY,
    api_key: Optional[str] = _API_KEY,
):
    """Each challenger against the champion on the same live texts: agreement, flips, confidence, live accuracy
    with McNemar's test, per-class recall change, offline test metrics, and what the gate would decide."""
    from cli.challengers import gateway_call, print_comparison
    from polyhead.errors import PolyheadError

    try:
        body = gateway_call("GET", gateway, f"/v1/models/{name}/challengers", api_key=api_key)
    except PolyheadError as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(body, ensure_ascii=False))
    else:
        print_comparison(body)


def _change_roles(name: str, action: str, body: dict, gateway: str, api_key: Optional[str], local: bool,
                  models_dir: Path) -> None:
    from cli.challengers import gateway_call
    from heads import roles
    from polyhead.errors import PolyheadError

    try:
        if local:
            import getpass

            actor = f"cli:{getpass.getuser()}"
            if action == "promote":
                from heads.config import PromotionConfig

                state = roles.promote(models_dir, name, body.get("version"), actor=actor, reason=body["reason"],
                                      guard_s=PromotionConfig().guard_s)
            else:
                state = roles.rollback(models_dir, name, actor=actor, reason=body["reason"])
            result = {"head": name, "champion": state.champion, "challengers": list(state.challengers)}
        else:
            result = gateway_call("POST", gateway, f"/v1/models/{name}/{action}", api_key=api_key, body=body)
    except PolyheadError as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result))


_LOCAL = typer.Option(False, "--local", help="Write models/<name>/serving.json here instead of asking the gateway "
                      "(running heads follow it within version_poll_s; the guard uses the default window)")
_MODELS_DIR = typer.Option(DEFAULT_MODELS_DIR, help="With --local: the artifacts")


@app.command("promote")
def promote_cmd(
    name: str = typer.Argument(..., help="Model (head) name"),
    version: Optional[str] = typer.Argument(None, help="The challenger to promote (default: the only one)"),
    reason: str = typer.Option("manual promotion", help="Why (kept in the audit log)"),
    gateway: str = _GATEWAY,
    api_key: Optional[str] = _API_KEY,
    local: bool = _LOCAL,
    models_dir: Path = _MODELS_DIR,
):
    """Make a challenger the champion; the old champion stays a challenger and the guard watches the new one."""
    _change_roles(name, "promote", {"version": version, "reason": reason}, gateway, api_key, local, models_dir)


@app.command("rollback")
def rollback_cmd(
    name: str = typer.Argument(..., help="Model (head) name"),
    reason: str = typer.Option("manual rollback", help="Why (kept in the audit log)"),
    gateway: str = _GATEWAY,
    api_key: Optional[str] = _API_KEY,
    local: bool = _LOCAL,
    models_dir: Path = _MODELS_DIR,
):
    """Back to the champion before the last promotion."""
    _change_roles(name, "rollback", {"reason": reason}, gateway, api_key, local, models_dir)


@app.command("retrain")
def retrain(
    names: Optional[List[str]] = typer.Argument(None, help="Heads to consider (default: every config in --heads-dir)"),
    heads_dir: Path = typer.Option(DEFAULT_HEADS_DIR, help="Head configs"),
    models_dir: Path = typer.Option(DEFAULT_MODELS_DIR, help="Where versioned artifacts are written"),
    embedder_target: str = typer.Option(DEFAULT_EMBEDDER_TARGET, envvar="POLYHEAD_EMBEDDER_TARGET"),
    db_url: str = typer.Option(DEFAULT_DB_URL, envvar="POLYHEAD_HEAD_DB_URL", help="The inference DB (feedback)"),
    force: bool = typer.Option(False, "--force", help="Retrain the named heads whatever their policy says"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say which heads are due and why; train nothing"),
    challengers_only: bool = typer.Option(False, "--challengers-only", help="Leave heads with no champion yet alone "
                                          "(their first version would serve): what schedules run"),
    gateway: str = _GATEWAY,
    api_key: Optional[str] = _API_KEY,
):
    """Retrain the heads whose `retraining:` policy says so (new feedback, drift, age) into CHALLENGERS, never
    champions: each is then shadowed on live traffic and promoted by `polyhead promote` or the auto gate."""
    from rich.console import Console

    from cli.challengers import drift_flag, retrain_reasons
    from embedder.client import EmbedderClient
    from heads.config import HeadConfigError, load_head_config
    from heads.roles import read_state
    from heads.training.run import train_from_config
    from polyhead.errors import PolyheadError

    console = Console(stderr=True)
    paths = [heads_dir / f"{n}.yaml" for n in names] if names else sorted(heads_dir.glob("*.yaml"))
    due = []
    for path in paths:
        try:
            cfg = load_head_config(path)
        except HeadConfigError as err:
            console.print(f"[red]{err}[/red]")
            raise typer.Exit(2) from None
        if challengers_only and read_state(models_dir, cfg.name).champion is None:
            typer.echo(json.dumps({"head": cfg.name, "due": False,
                                   "reasons": ["no champion yet: `polyhead train` makes its first version"]}))
            continue
        drift = drift_flag(gateway, cfg.name, api_key) if cfg.retraining.on_drift else None
        reasons = ["--force"] if force else retrain_reasons(cfg, models_dir, db_url, drift)
        if cfg.retraining.on_drift and drift is None and not force:
            console.print(f"[yellow]{cfg.name}: drift trigger not checked: no gateway answered at {gateway}[/yellow]")
        typer.echo(json.dumps({"head": cfg.name, "due": bool(reasons), "reasons": reasons}))
        if reasons:
            due.append(cfg)
    if dry_run or not due:
        return
    with EmbedderClient(embedder_target, timeout_s=120) as client:
        for cfg in due:
            try:
                report = train_from_config(cfg, models_dir, client, console=console,
                                           feedback_db_url=db_url if cfg.retraining.with_feedback else None)
            except PolyheadError as err:
                console.print(f"[red]{cfg.name}: {err.message}[/red]")
                raise typer.Exit(2) from None
            typer.echo(json.dumps({"head": report.name, "version": report.version, "role": report.role,
                                   "test_accuracy": report.metrics.get("test", {}).get("accuracy"),
                                   **({"feedback": report.feedback} if report.feedback is not None else {})}))


@app.command("batch")
def batch(
    input_path: Path = typer.Argument(..., help="INPUT.jsonl or INPUT.csv", exists=True, dir_okay=False),
    model: str = typer.Option(..., "--model", "-m", help="Model (head) name"),
    output: Path = typer.Option(..., "--output", "-o", help="Output JSONL (appended to; re-run to resume)"),
    gateway: str = typer.Option(DEFAULT_GATEWAY_URL, envvar="POLYHEAD_GATEWAY_URL"),
    direct: bool = typer.Option(False, "--direct", help="No gateway or head: embed with the embedder and apply "
                                "the head's artifact in this process (predictions are not logged to the inference DB)"),
    embedder_target: str = typer.Option(DEFAULT_EMBEDDER_TARGET, help="With --direct: the embedder's gRPC address"),
    heads_dir: Path = typer.Option(DEFAULT_HEADS_DIR, help="With --direct: where <model>.yaml is"),
    models_dir: Path = typer.Option(DEFAULT_MODELS_DIR, help="With --direct: the trained artifacts"),
    version: Optional[str] = typer.Option(None, help="With --direct: a version (default: the config's, usually latest)"),
    text_field: str = typer.Option("text"),
    id_field: Optional[str] = typer.Option(None, help="Copy this input field into each output row"),
    chunk_size: int = typer.Option(32, min=1, max=4096),
    concurrency: int = typer.Option(4, min=1, max=256),
    api_key: Optional[str] = typer.Option(None, envvar="POLYHEAD_API_KEY"),
):
    """Classify a whole file through the gateway (or --direct): progress bar, bounded concurrency, resumable."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cli.batch import DirectPredictor, GatewayPredictor, classify_file, done_rows, read_rows
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
            raise typer.Exit(2) from None
        except PolyheadError as err:
            typer.echo(f"error: {err.message}", err=True)
            raise typer.Exit(2) from None
    typer.echo(json.dumps({"rows": report.rows_total, "already_done": report.rows_done_before,
                           "classified": report.rows_classified, "seconds": round(report.seconds, 2),
                           "rows_per_s": round(report.rows_per_s, 1), "output": str(output)}))


@app.command("up")
@settings_options(StackSettings)
def up(settings: StackSettings):
    """Run the whole stack: embedder, every configured head, gateway (Ctrl-C stops all)."""
    from rich.console import Console

    from cli.stack import Stack

    raise typer.Exit(Stack(settings, Console()).run())


@app.command("status")
@settings_options(StackSettings)
def stack_status(settings: StackSettings):
    """Show each service of a running `polyhead up`: port, health, version."""
    from rich.console import Console
    from rich.table import Table

    from cli.stack import status

    rows = status(settings)
    if not rows:
        typer.echo("polyhead is not running here (no stack state found)")
        raise typer.Exit(1) from None
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
    heads_per_process: Optional[int] = typer.Option(
        None, min=0, help="0: every head packed in one service; 1: a service per head (default: StackSettings')"),
):
    """(Re)generate compose, Prometheus and Kubernetes files from configs/heads/*.yaml."""
    from heads.config import HeadConfigError
    from cli.deploy import stale, write

    try:
        changed = stale(root, heads_per_process=heads_per_process) if check else write(root, heads_per_process)
    except (HeadConfigError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    for rel in changed:
        typer.echo(f"{'stale' if check else 'wrote'}: {rel}")
    if check and changed:
        raise typer.Exit(1) from None
    if not changed:
        typer.echo("deployment files are up to date")


def main() -> None:
    sys.exit(app())
