"""A head process with a warm standby (`polyhead head serve --standby`): a crash costs no request.

The parent imports everything a head needs (numpy, grpc, FastAPI, uvicorn: most of a head
process's memory), opens the listening socket and forks two workers: the **active** one serves; the
**spare** waits on a pipe. The parent has built the app and loaded every artifact before it forks,
so a takeover is only the app's start (gRPC channel, log writer) and costs milliseconds. When the active worker dies (a crash, SIGKILL, OOM), the parent tells the
spare to serve and forks a new spare. The listening socket is the parent's: while no worker
accepts, connections wait in its backlog instead of being refused, and the gateway retries a call
whose connection broke once (gateway/core.py), so the requests in flight on the dead worker are
answered too. Workers share the parent's imported pages copy-on-write, so the standby costs its
own allocations only, not a second interpreter's imports (measure with scripts/soak.py --layout
standby: it reports PSS, which counts shared pages once).

What a takeover resets, as a restart did: runtime version pins (POST /admin/reload), the drift
window, Prometheus counters. The workers log to the same spool folder in turn (the active one holds
its lock; a dead worker's lock goes with it). gRPC channels are made only in workers, after the
fork: the parent imports grpc but never starts it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import time

from heads.settings import HeadSettings

log = logging.getLogger("polyhead.head.standby")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM when the parent goes (never a second server holding the port)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


class _Worker:
    def __init__(self, pid: int, go_fd: int | None):
        self.pid, self.go_fd = pid, go_fd

    def go(self) -> None:
        if self.go_fd is not None:
            os.write(self.go_fd, b"g")
            os.close(self.go_fd)
            self.go_fd = None


def _fork_worker(settings: HeadSettings, sock: socket.socket, app, *, active: bool) -> _Worker:
    read_fd, write_fd = (None, None) if active else os.pipe()
    pid = os.fork()
    if pid:
        if read_fd is not None:
            os.close(read_fd)
        return _Worker(pid, write_fd)
    # -- the worker --
    try:
        _die_with_parent()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        if read_fd is not None:
            os.close(write_fd)
            if os.read(read_fd, 1) != b"g":  # EOF: the parent went away
                os._exit(0)
            os.close(read_fd)
        _serve_on(settings, sock, app)
        os._exit(0)
    except BaseException:  # never return into the parent's loop
        logging.getLogger("polyhead.head.standby").exception("worker failed")
        os._exit(1)


def _warm_app(settings: HeadSettings):
    """The app with every head's artifact loaded, built once in the parent: every worker forked from
    it starts from there (shared copy-on-write). Nothing here runs an event loop, opens a gRPC channel
    or takes the spool lock: those start in the worker that serves (the app's lifespan)."""
    from heads.http_server import create_app

    app = create_app(settings)
    for service in app.state.process.services.values():
        service.manager.sync()  # never raises: a bad artifact is reported by its head's readiness, as without a standby
    return app


def _serve_on(settings: HeadSettings, sock: socket.socket, app) -> None:
    import asyncio

    import uvicorn

    from polyhead.http_protocol import uvicorn_options

    options = {k: v for k, v in uvicorn_options(settings, settings.keepalive_s).items() if k not in ("host", "port")}
    server = uvicorn.Server(uvicorn.Config(app, **options))
    asyncio.run(server.serve(sockets=[sock]))


def serve_with_standby(settings: HeadSettings) -> int:
    # Build in the parent what the workers need (imports, the app, the artifacts), so they share those pages.
    import polyhead.http_protocol  # noqa: F401

    app = _warm_app(settings)

    sock = socket.create_server((settings.host, settings.port), backlog=2048)
    sock.set_inheritable(True)
    stopping = False
    active = spare = None

    def stop(signum, frame):
        # waitpid resumes after a handled signal (PEP 475): ending the workers is what wakes it up.
        nonlocal stopping
        stopping = True
        for worker in (active, spare):
            if worker is not None:
                _kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    active = _fork_worker(settings, sock, app, active=True)
    spare = _fork_worker(settings, sock, app, active=False)
    log.info("head process with a warm standby", extra={"active": active.pid, "spare": spare.pid})
    while not stopping:
        try:
            pid, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            break
        if stopping:
            break
        if pid == active.pid:
            took = time.perf_counter()
            spare.go()
            log.warning("active worker %d died (%s); standby %d takes over", pid, _describe(status), spare.pid)
            active = spare
            spare = _fork_worker(settings, sock, app, active=False)
            log.info("new standby forked", extra={"spare": spare.pid, "ms": round((time.perf_counter() - took) * 1e3)})
        elif pid == spare.pid:
            log.warning("standby worker %d died (%s); forking another", pid, _describe(status))
            if spare.go_fd is not None:
                os.close(spare.go_fd)
            time.sleep(0.5)  # a spare that cannot even wait must not spin
            spare = _fork_worker(settings, sock, app, active=False)
    for worker in (active, spare):
        _kill(worker.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for worker in (active, spare):
        while time.monotonic() < deadline:
            try:
                if os.waitpid(worker.pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.05)
        else:
            _kill(worker.pid, signal.SIGKILL)
    sock.close()
    return 0


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.waitstatus_to_exitcode(status)}"
