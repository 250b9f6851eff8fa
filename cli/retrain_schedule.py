"""`polyhead up`'s retraining schedule: `polyhead retrain --challengers-only` every retrain_every_s.

The run is the same command an operator types (or the Kubernetes CronJob runs), in a child
process of its own, so a slow or crashing training never stalls the supervisor. Runs never
overlap: a tick that finds the previous run still going skips (and says so). It makes challengers
only: a head with no champion yet is left to `polyhead up`'s own first training.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cli.processes import terminate


@dataclass
class RetrainSchedule:
    argv: list[str]  # the whole `python -m cli retrain ...` command
    every_s: float  # 0 = off
    log: Path
    console: object
    env: dict | None = None
    next_due: float = field(default=0.0)
    proc: subprocess.Popen | None = None
    runs: int = 0
    skipped: int = 0
    last_outcome: dict | None = None
    _offset: int = 0  # where this run's output starts in the log

    def __post_init__(self) -> None:
        self.next_due = time.monotonic() + self.every_s  # the first run one interval after start

    @property
    def enabled(self) -> bool:
        return self.every_s > 0

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tick(self, now: float | None = None) -> None:
        """Called by the supervisor loop: report a finished run, start one when due (never two at once)."""
        if not self.enabled:
            return
        now = time.monotonic() if now is None else now
        if self.proc is not None and not self.running():
            self._report()
        if now < self.next_due:
            return
        self.next_due = now + self.every_s
        if self.running():
            self.skipped += 1
            self.console.print(f"[yellow]scheduled retrain skipped: the previous run (pid {self.proc.pid}) is still "
                               f"going; see {self.log}[/yellow]")
            return
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        self.runs += 1
        self.console.print(f"scheduled retrain started (run {self.runs}, pid {self.proc.pid}; log {self.log})")

    def _report(self) -> None:
        code = self.proc.returncode
        self.proc = None
        with open(self.log, "rb") as f:
            f.seek(self._offset)
            lines = f.read().decode("utf-8", "replace").splitlines()
        rows = []
        for line in lines:
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
        trained = [r for r in rows if "version" in r]
        due = [r["head"] for r in rows if r.get("due")]
        self.last_outcome = {"exit_code": code, "due": due, "trained": trained}
        if code == 0:
            made = ", ".join(f"{r['head']} {r['version']} ({r['role']})" for r in trained) or "nothing due"
            self.console.print(f"scheduled retrain finished: {made}")
        else:
            self.console.print(f"[red]scheduled retrain failed (exit {code}); see {self.log}[/red]")

    def stop(self, timeout_s: float = 10) -> None:
        if self.running():
            terminate(self.proc, timeout_s)
