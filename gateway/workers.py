"""``distill-gateway --workers N``: N processes serving the same ports.

The parent binds the listeners (so a port in use is one clear line, before any model loads),
then starts N workers (fresh interpreters running the same command) that inherit the bound
sockets, and only supervises: it passes SIGTERM and SIGINT on, and when one worker exits on its
own (a crash, a failed start, a kill by a signal) it stops the others and exits with that
worker's code (128 + the signal's number for a worker killed by one, as shells report it), so
that Kubernetes restarts the pod whole and its status says why. The workers share the share and
the predictions through the state store, and their metrics through prometheus-client's
multiprocess files: ``/metrics`` from any of them reports the group once.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from types import FrameType

from prometheus_client import multiprocess

from gateway.feedback_auth import TICKET_KEY_VARIABLE

log = logging.getLogger("gateway")
INHERITED = "_DISTILL_GATEWAY_WORKER_SOCKETS"
"""How a worker learns its listeners' file descriptors: ``host|port|fd`` joined by commas."""
STOP_SECONDS = 60.0
"""How long the workers may take to stop (they drain and finish requests) before SIGKILL."""


def is_worker() -> bool:
    """Whether this process is one of a ``--workers`` group (the ports are shared)."""
    return bool(os.environ.get(INHERITED))


def inherited_sockets() -> dict[tuple[str, int], socket.socket] | None:
    """In a worker: the listeners its parent bound (call once: the sockets own the descriptors);
    None in a process started by hand."""
    value = os.environ.get(INHERITED)
    if not value:
        return None
    sockets = {}
    for item in value.split(","):
        host, port, fd = item.rsplit("|", 2)
        sockets[(host, int(port))] = socket.socket(fileno=int(fd))
    return sockets


def shared_ticket_key(environment: Mapping[str, str]) -> dict[str, str]:
    """One key for every worker's feedback tickets when nothing configures one (no ticket key,
    no admin token to derive it from): a label may reach another worker than the one that
    answered it (``gateway.feedback_auth``)."""
    if TICKET_KEY_VARIABLE in environment or "DISTILL_GATEWAY_ADMIN_TOKEN" in environment:
        return {}
    return {TICKET_KEY_VARIABLE: secrets.token_hex(32)}


def supervise(workers: int, sockets: dict[tuple[str, int], socket.socket]) -> int:
    """Runs ``workers`` copies of this command on ``sockets``; returns the exit code."""
    metrics_dir = Path(tempfile.mkdtemp(prefix="distill-gateway-metrics-"))
    environment = {
        **shared_ticket_key(os.environ),
        **os.environ,
        INHERITED: ",".join(f"{h}|{p}|{s.fileno()}" for (h, p), s in sockets.items()),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    command = [sys.executable, "-c", "from gateway.cli import main; main()", *sys.argv[1:]]
    fds = tuple(s.fileno() for s in sockets.values())
    children = [subprocess.Popen(command, env=environment, pass_fds=fds) for _ in range(workers)]
    log.info("started %d workers (pids %s)", workers, ", ".join(str(c.pid) for c in children))
    stopping = False
    passed_on: set[int] = set()  # the signals we sent: a worker they ended did as it was asked

    def pass_on(number: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        passed_on.add(number)
        for child in children:
            if child.poll() is None:
                child.send_signal(number)

    previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        first = _wait_for_the_first(children)
        if not stopping:
            log.error("worker %d %s: stopping the others", first.pid, _how_it_ended(first))
            pass_on(signal.SIGTERM, None)
            code = exit_code(first.returncode)  # it says why the group stopped
        else:
            code = 0
        _wait_for_all(children)
        # Else the worst of them: one that crashed while stopping, or had to be killed.
        code = code or max(exit_code(c.returncode, passed_on) for c in children)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for child in children:
            multiprocess.mark_process_dead(child.pid, str(metrics_dir))
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return code


def exit_code(returncode: int, expected: Collection[int] = ()) -> int:
    """A child's return code as a process exit code: a child killed by signal N (``-N`` from
    ``subprocess``) is 128 + N, as shells report it (137 for SIGKILL: the OOM killer), never 0,
    unless N is one of the ``expected`` signals (one we sent it to stop it)."""
    if returncode < 0:
        return 0 if -returncode in expected else 128 - returncode
    return returncode


def _how_it_ended(child: subprocess.Popen[bytes]) -> str:
    if child.returncode >= 0:
        return f"exited with {child.returncode}"
    try:
        name = signal.Signals(-child.returncode).name
    except ValueError:
        name = f"signal {-child.returncode}"
    return f"was killed by {name} (exit {exit_code(child.returncode)})"


def _wait_for_the_first(children: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    while True:
        for child in children:
            if child.poll() is not None:
                return child
        time.sleep(0.2)


def _wait_for_all(children: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + STOP_SECONDS
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
