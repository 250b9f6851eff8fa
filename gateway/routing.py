"""The routing table: model name -> head address, derived from configs/heads/*.yaml.

Rebuilt when a config or the routes file changes (polled by mtime) or on POST /admin/reload, so
a new head becomes routable without restarting the gateway, and without touching the embedder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway.settings import GatewaySettings
from heads.config import HeadConfigError, load_head_config
from polyhead.errors import NotFoundError

log = logging.getLogger("polyhead.gateway.routing")


@dataclass(frozen=True)
class Route:
    name: str
    url: str
    description: str
    timeout_s: float | None = None
    # heads.config.HeadConfig.labels: feedback labels beyond the trained ones ("closed", "open" or a tuple)
    new_labels: str | tuple[str, ...] = "closed"
    min_new_label_examples: int = 8

    def allows_new_label(self, label: str) -> bool:
        return self.new_labels == "open" or (isinstance(self.new_labels, tuple) and label in self.new_labels)


class RoutingTable:
    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.routes: dict[str, Route] = {}
        self.errors: dict[str, str] = {}  # config file -> why it was skipped
        self._stamp: tuple = ()

    def _files(self) -> list[Path]:
        files = sorted(Path(self.settings.heads_dir).glob("*.yaml"))
        if self.settings.routes_file:
            files.append(Path(self.settings.routes_file))
        return files

    def _current_stamp(self) -> tuple:
        return tuple((str(p), p.stat().st_mtime_ns) for p in self._files() if p.exists())

    def refresh(self, force: bool = False) -> bool:
        """Rebuild if anything changed; True if the table changed."""
        stamp = self._current_stamp()
        if stamp == self._stamp and not force:
            return False
        overrides = {}
        if self.settings.routes_file and Path(self.settings.routes_file).exists():
            overrides = yaml.safe_load(Path(self.settings.routes_file).read_text()) or {}
        routes, errors = {}, {}
        for path in sorted(Path(self.settings.heads_dir).glob("*.yaml")):
            try:
                config = load_head_config(path)
            except HeadConfigError as err:  # one bad config must not take the others down
                errors[str(path)] = str(err)
                continue
            url = overrides.get(config.name) or config.serving.address or \
                self.settings.head_url_template.format(name=config.name)
            new_labels = tuple(config.labels) if isinstance(config.labels, list) else config.labels
            routes[config.name] = Route(config.name, url.rstrip("/"), config.description, config.serving.timeout_s,
                                        new_labels, config.min_new_label_examples)
        changed = routes != self.routes
        self.routes, self.errors, self._stamp = routes, errors, stamp
        if changed:
            log.info("routing table updated", extra={"models": sorted(routes), "skipped": sorted(errors)})
        return changed

    def get(self, name: str) -> Route:
        route = self.routes.get(name)
        if route is None:
            known = ", ".join(sorted(self.routes)) or "(none)"
            raise NotFoundError(f"unknown model {name!r}; known models: {known}", field="name")
        return route
