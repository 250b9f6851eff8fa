"""`polyhead compare / promote / rollback / retrain`: challengers from the command line.

compare, promote and rollback go through the gateway (its admin key for the last two), so the
head that serves the model acts at once and the audit log names the key; `--local` writes the
head's serving.json under --models-dir instead (running heads follow it within version_poll_s).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.gateway_client import call_gateway
from polyhead.errors import PolyheadError


def gateway_call(method: str, gateway: str, path: str, *, api_key: str | None = None, body: dict | None = None) -> dict:
    """One gateway call; its error message (naming the field) on a 4xx/5xx."""
    return call_gateway(method, f"{gateway.rstrip('/')}{path}", api_key=api_key, timeout_s=60,
                        hint=" (or use --local)", json=body).json()


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def print_comparison(body: dict, console: Console | None = None) -> None:
    console = console or Console()
    test = body.get("champion_offline_test") or {}
    console.print(f"[bold]{escape(body['model'])}[/bold]: champion {body['champion']} "
                  f"(offline test accuracy {_pct(test.get('accuracy'))}); policy {body['policy']['mode']}")
    if body.get("guard"):
        g = body["guard"]
        console.print(f"guard {'active' if g['active'] else 'ended'} since {g['since']} (previous {g['previous']}, "
                      f"until {g['until']})" + (f": {escape(g['decision']['reason'])}" if g.get("decision") else ""))
    if not body["challengers"]:
        console.print("no challengers (train one: `polyhead train CONFIG` or `polyhead retrain NAME`)")
    for ch in body["challengers"]:
        state = "shadowed" if ch["in_shadow"] else f"[red]not shadowed: {escape(ch['error'] or '')}[/red]"
        console.print(f"\n[bold]challenger {ch['version']}[/bold] ({state})")
        summary = Table("figure", "champion", "challenger", "change")
        summary.add_row("shadowed texts", str(ch["shadowed"]), "", "")
        summary.add_row("agreement", "", "", _pct(ch["agreement"]))
        c = ch["confidence"]
        summary.add_row("mean confidence", _pct(c["champion_mean"]), _pct(c["challenger_mean"]), _pct(c["shift"]))
        off_c, off_n = test.get("accuracy"), (ch.get("offline_test") or {}).get("accuracy")
        summary.add_row("offline test accuracy", _pct(off_c), _pct(off_n),
                        _pct(off_n - off_c) if off_c is not None and off_n is not None else "-")
        fb = ch.get("feedback")
        if fb:
            summary.add_row(f"live accuracy ({fb['paired']} texts with direct or random-slice feedback)", _pct(fb["champion_accuracy"]),
                            _pct(fb["challenger_accuracy"]), _pct(fb["accuracy_change"]))
            summary.add_row("right where they disagree", str(fb["champion_only_correct"]),
                            str(fb["challenger_only_correct"]), f"McNemar p={fb['mcnemar_p']:.3g}")
            for cls in fb["per_class"]:
                summary.add_row(f"  recall {escape(cls['label'])} ({cls['support']})", _pct(cls["champion_recall"]),
                                _pct(cls["challenger_recall"]), _pct(cls["recall_change"]))
        console.print(summary)
        if ch["flips"]:
            flips = Table("champion said", "challenger says", "texts", "examples")
            for f in ch["flips"][:15]:
                flips.add_row(escape(f["champion_label"]), escape(f["challenger_label"]), str(f["count"]),
                              escape(" | ".join(t[:60] for t in f["examples"])))
            console.print(flips)
        verdict = ch["gate"]
        console.print(f"gate: {'[green]would promote[/green]' if verdict['act'] else 'would not promote'}: "
                      f"{escape(verdict['reason'])}")


def retrain_reasons(config, models_dir: Path, db_url: str, drift_flagged: bool | None) -> list[str]:
    """Why this head is due for retraining under its `retraining:` policy (empty: not due)."""
    from heads.roles import read_state
    from polyhead.inference_log.challengers import feedback_since
    from polyhead.inference_log.schema import make_engine, migrate

    policy = config.retraining
    state = read_state(models_dir, config.name)
    if state.champion is None:
        return ["no trained version yet"]
    manifest = json.loads((Path(models_dir) / config.name / state.champion / "manifest.json").read_text())
    created = datetime.fromisoformat(manifest["created"])
    reasons = []
    if policy.min_new_feedback is not None:
        engine = make_engine(db_url)
        try:
            migrate(engine)
            new = feedback_since(engine, config.name, created)
        finally:
            engine.dispose()
        if new >= policy.min_new_feedback:
            reasons.append(f"{new} feedback labels since the champion was trained (>= {policy.min_new_feedback})")
    if policy.on_drift and drift_flagged:
        reasons.append("drift flagged")
    if policy.max_age_days is not None:
        age = (datetime.now(timezone.utc) - created).total_seconds() / 86400
        if age >= policy.max_age_days:
            reasons.append(f"champion is {age:.1f} days old (>= {policy.max_age_days:g})")
    return reasons


def drift_flag(gateway: str, name: str, api_key: str | None) -> bool | None:
    try:
        info = gateway_call("GET", gateway, f"/v1/models/{name}", api_key=api_key)
    except PolyheadError:
        return None  # no gateway: the drift trigger cannot be read (said in the output)
    return bool((info.get("drift") or {}).get("flagged"))
