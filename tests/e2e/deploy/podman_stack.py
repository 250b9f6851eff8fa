"""Run services of the generated docker-compose.yml as podman containers: the same image, command,
environment, volumes, network names and health checks as compose would use (no compose
implementation is needed, and podman's flags for restricted hosts can be added).

What a host without an image registry cannot run as compose says is substituted by the caller
(`image_override`, `volume_overrides`), and said so there."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.conftest import ROOT

# What a restricted sandbox (gVisor) needs, harmless elsewhere: runc (crun's cgroup setup is
# refused) and rlimits lowered rather than raised. deploy/build_images.sh uses the same.
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
_SUBST = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def podman_base() -> list[str]:
    return ["podman", *(["--runtime", "runc"] if shutil.which("runc") else [])]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*podman_base(), *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} ... exit {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result


def substitute(value: str, variables: dict[str, str] | None = None) -> str:
    """Compose's `${VAR:-default}` interpolation (variables: this process's environment by default)."""
    variables = os.environ if variables is None else variables
    return _SUBST.sub(lambda m: variables.get(m.group(1)) or (m.group(2) or ""), value)


def load_compose(path: Path = ROOT / "docker-compose.yml") -> dict:
    return yaml.safe_load(path.read_text())


@dataclass
class Service:
    """One compose service, run as one container on the project's network (its name as DNS alias)."""

    name: str
    spec: dict
    project: str
    variables: dict[str, str] = field(default_factory=lambda: dict(os.environ))  # for ${VAR:-default}
    image_override: str | None = None
    env_overrides: dict[str, str] = field(default_factory=dict)
    volume_overrides: dict[str, str] = field(default_factory=dict)  # compose source -> podman volume name
    extra_volumes: list[str] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)  # more `podman run` flags
    started_at: float = 0.0
    healthy_after_s: float | None = None

    @property
    def container(self) -> str:
        return f"{self.project}-{self.name}"

    def environment(self) -> dict[str, str]:
        env = {k: substitute(str(v), self.variables) for k, v in (self.spec.get("environment") or {}).items()}
        return {**env, **self.env_overrides}

    def volume_args(self) -> list[str]:
        args = []
        for vol in self.spec.get("volumes") or []:
            if isinstance(vol, str):  # short form: SOURCE:TARGET[:ro]
                source, target, *mode = vol.split(":")
                kind = "bind" if source.startswith((".", "/")) else "volume"
                vol = {"type": kind, "source": source, "target": target, "read_only": mode == ["ro"]}
            source, target = vol["source"], vol["target"]
            options = "ro" if vol.get("read_only") else "rw"
            if source in self.volume_overrides:
                source = self.volume_overrides[source]
            elif vol["type"] == "bind":
                source = str((ROOT / source).resolve())
            else:
                source = f"{self.project}-{source}"
            args += ["-v", f"{source}:{target}:{options}"]
        for spec in self.extra_volumes:
            args += ["-v", spec]
        return args

    def run_args(self, network: str) -> list[str]:
        args = ["run", "-d", "--name", self.container, "--network", network, "--network-alias", self.name,
                *ULIMITS, *self.extra_args, *self.volume_args()]
        for key, value in self.environment().items():
            args += ["-e", f"{key}={value}"]
        for port in self.publish:
            args += ["-p", port]
        image = self.image_override or substitute(self.spec["image"], self.variables)
        return [*args, image, *[substitute(str(c), self.variables) for c in self.spec.get("command") or []]]

    def start(self, network: str) -> None:
        self.started_at = time.monotonic()
        podman(*self.run_args(network))

    def health_command(self) -> list[str]:
        test = self.spec["healthcheck"]["test"]
        if test[0] == "CMD":
            return list(test[1:])
        assert test[0] == "CMD-SHELL", test
        return ["sh", "-c", substitute(test[1], self.variables)]

    def healthy(self) -> bool:
        return podman("exec", self.container, *self.health_command(), timeout=30, check=False).returncode == 0

    def wait_healthy(self, timeout_s: float) -> float:
        """Poll the compose health check (every second, not compose's 10 s interval) until it passes;
        the seconds since start are the cold start."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.state()
            if state.get("Status") == "exited":
                raise AssertionError(f"{self.name} exited ({state.get('ExitCode')}):\n{self.logs()}")
            if self.healthy():
                self.healthy_after_s = time.monotonic() - self.started_at
                return self.healthy_after_s
            time.sleep(1)
        raise AssertionError(f"{self.name} not healthy after {timeout_s:.0f} s:\n{self.logs()}")

    def state(self) -> dict:
        result = podman("inspect", "--format", "{{json .State}}", self.container, check=False)
        return json.loads(result.stdout) if result.returncode == 0 else {}

    def logs(self, tail: int = 60) -> str:
        result = podman("logs", "--tail", str(tail), self.container, check=False)
        return (result.stdout + result.stderr)[-6000:]

    def exec_python(self, code: str) -> str:
        return podman("exec", self.container, "python", "-c", code, timeout=60).stdout.strip()

    def rss_mib(self) -> float:
        """Resident memory of every process in the container but this probe (from /proc: works where
        the container's cgroup statistics do not, e.g. in gVisor)."""
        code = ("import os, re\n"
                "total = 0\n"
                "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
                "    if int(pid) == os.getpid():\n"
                "        continue\n"
                "    try:\n"
                "        status = open(f'/proc/{pid}/status').read()\n"
                "    except OSError:\n"
                "        continue\n"
                "    m = re.search(r'VmRSS:\\s+(\\d+) kB', status)\n"
                "    total += int(m.group(1)) if m else 0\n"
                "print(total)")
        return int(self.exec_python(code)) / 1024

    def process_uids(self) -> set[int]:
        """The real uids of the container's processes (the service, not an exec'd probe: that is PID 1's)."""
        code = "print(open('/proc/1/status').read().split('Uid:')[1].split()[0])"
        return {int(self.exec_python(code))}

    def stop(self, timeout_s: int = 30) -> dict:
        """SIGTERM, up to timeout_s for a graceful exit, then SIGKILL; returns the final state."""
        started = time.monotonic()
        podman("stop", "-t", str(timeout_s), self.container, timeout=timeout_s + 60, check=False)
        return {**self.state(), "stop_s": time.monotonic() - started}

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.container, check=False)


def build(containerfile: Path, tag: str, base_image: str, timeout: float = 900) -> None:
    """podman build with deploy/build_images.sh's flags (and this host's CA bundle for apt/pip)."""
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    mounts = ["-v", f"{ca}:{ca}:ro"] if ca.is_file() else []
    podman("build", "--format", "docker", "--isolation", "chroot", "--network", "host", *ULIMITS, *mounts,
           "--build-arg", f"BASE_IMAGE={base_image}", "-f", str(containerfile), "-t", tag, str(containerfile.parent),
           timeout=timeout)


def image_size_mb(image: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip()) / 1e6


def engine_problem() -> str | None:
    """Why containers cannot run here, or None."""
    if not shutil.which("podman"):
        return "podman is not installed (Debian: apt-get install podman runc debootstrap)"
    result = subprocess.run([*podman_base(), "info", "--format", "{{.Host.OCIRuntime.Name}}"],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        return f"podman does not work here: {result.stderr.strip()[-300:]}"
    if os.geteuid() != 0:
        return "the container test runs rootful podman (and debootstrap for the base image): run it as root"
    return None
