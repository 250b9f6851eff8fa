"""Which versions of a head serve: one champion (answers callers) and any challengers (shadow only).

The state lives beside the artifacts, in models/<name>/serving.json, so it survives restarts and is
the same for a one-head process, a packed process and the CLI:

    {"champion": "<version>", "challengers": ["<version>", ...], "updated": "<UTC ISO>",
     "guard": {"previous": "<version>", "since": "<UTC ISO>", "until": "<UTC ISO>"} | null,
     "history": [{"ts", "event", "version", "previous", "actor", "reason"}, ...]}   # the last MAX_HISTORY

Every change is a read-modify-write under an flock on models/<name>/.serving.lock, written to a
temporary file and renamed, so a head polling the file never reads half of it. Every promotion and
rollback is also appended to models/<name>/audit.jsonl with the figures that decided it.

Compatibility: a head without serving.json (artifacts written before roles) has the `latest`
pointer's version as its champion and no challengers; the first change writes the file.
`latest` itself now only names the newest trained version, not the served one.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from heads.artifacts import _atomic_write, list_versions, resolve_version, versions_for_fingerprint
from polyhead.errors import ConflictError, NotFoundError

STATE_FILE = "serving.json"
AUDIT_FILE = "audit.jsonl"
LOCK_FILE = ".serving.lock"
MAX_HISTORY = 200  # the audit log keeps everything; the state file only what a reader needs at a glance


@dataclass(frozen=True)
class Guard:
    """After a promotion: the version it replaced, and the window in which the guard may roll back."""

    previous: str
    since: str
    until: str


@dataclass(frozen=True)
class ServingState:
    champion: str | None
    challengers: tuple[str, ...] = ()
    guard: Guard | None = None
    history: tuple[dict, ...] = ()
    updated: str | None = None
    from_file: bool = field(default=False, compare=False)  # False: derived from `latest` (old layout)

    def to_json(self) -> dict:
        return {"champion": self.champion, "challengers": list(self.challengers),
                "guard": asdict(self.guard) if self.guard else None, "updated": self.updated,
                "history": list(self.history)}

    @classmethod
    def from_json(cls, obj: dict) -> ServingState:
        guard = obj.get("guard")
        return cls(obj.get("champion"), tuple(obj.get("challengers") or ()), Guard(**guard) if guard else None,
                   tuple(obj.get("history") or ()), obj.get("updated"), from_file=True)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def state_path(models_dir: Path, name: str) -> Path:
    return Path(models_dir) / name / STATE_FILE


def read_state(models_dir: Path, name: str) -> ServingState:
    """The head's roles; without serving.json, the old layout's (champion = `latest`, no challengers)."""
    path = state_path(models_dir, name)
    try:
        return ServingState.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        pass
    try:
        return ServingState(resolve_version(models_dir, name))
    except NotFoundError:
        return ServingState(None)


def state_stamp(models_dir: Path, name: str) -> tuple:
    """Cheap change detection for pollers: (mtime_ns, size) of serving.json and `latest`."""
    stamps = []
    for f in (STATE_FILE, "latest"):
        try:
            st = (Path(models_dir) / name / f).stat()
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except FileNotFoundError:
            stamps.append(None)
    return tuple(stamps)


@contextmanager
def _locked(models_dir: Path, name: str) -> Iterator[None]:
    root = Path(models_dir) / name
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def update_state(models_dir: Path, name: str, change: Callable[[ServingState], ServingState]) -> ServingState:
    """Read, change and write the state under the head's lock; returns the state written."""
    with _locked(models_dir, name):
        new = change(read_state(models_dir, name))
        new = replace(new, updated=now_iso(), history=tuple(new.history[-MAX_HISTORY:]))
        _atomic_write(state_path(models_dir, name), json.dumps(new.to_json(), indent=1) + "\n")
        return replace(new, from_file=True)


def _event(event: str, version: str | None, previous: str | None, actor: str, reason: str) -> dict:
    return {"ts": now_iso(), "event": event, "version": version, "previous": previous, "actor": actor,
            "reason": reason}


def register_trained(models_dir: Path, name: str, version: str, *, promote: bool = False,
                     max_challengers: int = 3, actor: str = "train", guard_s: float = 0.0) -> ServingState:
    """A newly written version: the champion when it is the head's first, else a challenger; with
    `promote` a challenger promoted at once (a promotion like any other: audit log, the old champion
    kept as a challenger, the guard). Beyond `max_challengers` the oldest challengers are retired
    (they stay on disk)."""
    if version not in list_versions(models_dir, name):
        raise NotFoundError(f"head {name!r} has no version {version!r}")

    def change(state: ServingState) -> ServingState:
        champion = state.champion if state.champion != version else None
        if champion is None:
            challengers = tuple(v for v in state.challengers if v != version)
            history = state.history + (_event("champion", version, None, actor, "first version"),)
            return replace(state, champion=version, challengers=challengers, guard=None, history=history)
        challengers = tuple(v for v in state.challengers if v != version) + (version,)
        retired = challengers[:-max_challengers] if max_challengers > 0 else challengers
        history = state.history + (_event("challenger", version, champion, actor, "newly trained"),)
        history += tuple(_event("retired", v, champion, actor, f"more than {max_challengers} challengers")
                         for v in retired)
        return replace(state, challengers=tuple(v for v in challengers if v not in retired), history=history)

    state = update_state(models_dir, name, change)
    if promote and state.champion != version:
        state = _promote(models_dir, name, version, actor=actor, reason="trained with --promote", guard_s=guard_s)
    return state


def promote(models_dir: Path, name: str, version: str | None = None, *, actor: str, reason: str,
            figures: dict | None = None, guard_s: float = 0.0, expect_champion: str | None = None) -> ServingState:
    """Make a challenger (the only one when `version` is None) the champion; the champion it replaces
    becomes a challenger, so it keeps being shadowed and the guard can compare both on the same texts.
    `expect_champion`: refuse (ConflictError, 409) if the champion changed meanwhile (the auto gate
    decided on figures about that champion)."""

    def change(state: ServingState) -> ServingState:
        wanted = version
        if wanted is None:
            if len(state.challengers) != 1:
                raise ConflictError(f"version: head {name!r} has {len(state.challengers)} challengers "
                                      f"({', '.join(state.challengers) or 'none'}); name the one to promote",
                                      field="version")
            wanted = state.challengers[0]
        if wanted not in list_versions(models_dir, name):
            raise NotFoundError(f"version: head {name!r} has no version {wanted!r}", field="version")
        if expect_champion is not None and state.champion != expect_champion:
            raise ConflictError(f"version: the champion of {name!r} changed ({expect_champion} -> "
                                  f"{state.champion}) while the promotion was decided", field="version")
        if wanted == state.champion:
            raise ConflictError(f"version: {wanted} is already the champion of {name!r}", field="version")
        previous = state.champion
        challengers = tuple(v for v in state.challengers if v != wanted) + ((previous,) if previous else ())
        ts = datetime.now(timezone.utc)
        guard = Guard(previous, ts.isoformat(), (ts + timedelta(seconds=guard_s)).isoformat()) \
            if previous and guard_s > 0 else None
        history = state.history + (_event("promote", wanted, previous, actor, reason),)
        return replace(state, champion=wanted, challengers=challengers, guard=guard, history=history)

    state = update_state(models_dir, name, change)
    append_audit(models_dir, name, {"event": "promote", "version": state.champion,
                                    "previous": state.history[-1]["previous"], "actor": actor, "reason": reason,
                                    "figures": figures or {}})
    return state


_promote = promote  # for register_trained, whose `promote` flag hides the function


def rollback(models_dir: Path, name: str, *, actor: str, reason: str, figures: dict | None = None) -> ServingState:
    """Back to the champion before the last promotion (the guard's `previous`, else the history's);
    the demoted version stays a challenger, so its shadow figures keep coming."""

    def change(state: ServingState) -> ServingState:
        previous = state.guard.previous if state.guard else next(
            (h["previous"] for h in reversed(state.history) if h["event"] == "promote" and h["version"] == state.champion
             and h.get("previous")), None)
        if previous is None:
            raise ConflictError(f"head {name!r}: no earlier champion to roll back to (no promotion in its history)",
                                  field="name")
        if previous not in list_versions(models_dir, name):
            raise NotFoundError(f"head {name!r}: version {previous!r} to roll back to is gone from disk")
        demoted = state.champion
        challengers = tuple(v for v in state.challengers if v not in (previous, demoted)) + ((demoted,) if demoted else ())
        history = state.history + (_event("rollback", previous, demoted, actor, reason),)
        return replace(state, champion=previous, challengers=challengers, guard=None, history=history)

    state = update_state(models_dir, name, change)
    append_audit(models_dir, name, {"event": "rollback", "version": state.champion,
                                    "previous": state.history[-1]["previous"], "actor": actor, "reason": reason,
                                    "figures": figures or {}})
    return state


def retire(models_dir: Path, name: str, version: str, *, actor: str, reason: str) -> ServingState:
    """Stop shadowing a challenger (its artifact stays on disk)."""

    def change(state: ServingState) -> ServingState:
        if version not in state.challengers:
            raise NotFoundError(f"version: {version!r} is not a challenger of {name!r}", field="version")
        history = state.history + (_event("retired", version, state.champion, actor, reason),)
        return replace(state, challengers=tuple(v for v in state.challengers if v != version), history=history)

    return update_state(models_dir, name, change)


def end_guard(models_dir: Path, name: str, *, actor: str, reason: str) -> ServingState:
    def change(state: ServingState) -> ServingState:
        history = state.history + (_event("guard-ended", state.champion, state.guard.previous if state.guard else None,
                                          actor, reason),)
        return replace(state, guard=None, history=history)

    return update_state(models_dir, name, change)


def append_audit(models_dir: Path, name: str, entry: dict) -> None:
    """One JSON line per promotion/rollback, fsync'd: who, when, why and the figures."""
    path = Path(models_dir) / name / AUDIT_FILE
    line = json.dumps({"ts": now_iso(), "head": name, **entry}, ensure_ascii=False, default=str) + "\n"
    with _locked(models_dir, name), open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_audit(models_dir: Path, name: str, limit: int = 100) -> list[dict]:
    """The last `limit` audit entries, newest first (a torn last line is skipped)."""
    path = Path(models_dir) / name / AUDIT_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out[::-1][:limit]


def serve_fingerprint(models_dir: Path, name: str, fingerprints: str | Collection[str], *,
                      actor: str = "polyhead up") -> bool:
    """Make the champion a version trained for the encoder now served (the embedder was switched to
    another backend or precision, or back): the newest version on any of `fingerprints` (one per
    feature set a `feature_set: auto` head may have chosen), promoted and audited, unless the
    champion already is one. False when the head has no such version (then it must be trained)."""
    wanted = {fingerprints} if isinstance(fingerprints, str) else set(fingerprints)
    matching = sorted({v for f in wanted for v in versions_for_fingerprint(models_dir, name, f)})
    if not matching:
        return False
    if read_state(models_dir, name).champion not in matching:
        promote(models_dir, name, matching[-1], actor=actor,
                reason=f"the embedder now serves encoder {', '.join(sorted(wanted))}; this version was trained on it")
    return True
