"""Starts local processes on free loopback ports and waits until they are ready: a gateway, and a
Prometheus server scraping it.

For the demo, the local stack, the benchmarks and the tests; production runs them its own way.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import httpx
import yaml

from controller.gateway_paths import traffic_path

BIN = Path(sys.executable).parent


LOCAL_FEEDBACK_TOKEN = "local-label-pipeline-token"
"""The feedback token of the gateways the local tooling starts: the traffic generator labels its
requests with it, as a label pipeline would (tritonclient shows it no answer's ticket)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Polls ``condition`` until it holds; raises TimeoutError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class ManagedProcess:
    """A server in a child process: started, polled until ready (failing fast if it exits), and
    stopped gently, then firmly. Output goes to ``log_path``. Subclasses say how to start it and
    when it is ready."""

    name = "process"
    log_path: Path
    new_session = False  # True: signals go to its whole process group (servers with children)
    _process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        return None  # inherit ours

    def is_ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> Self:
        """Starts (or starts again, with the same ports) and waits until ready."""
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment(),
                start_new_session=self.new_session,
            )  # fmt: skip
        wait_until(self._ready, timeout, f"{self.name} to be ready")
        return self

    def _ready(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self._process.returncode}:\n{self.log()}")
        try:
            return self.is_ready()
        except httpx.HTTPError:
            return False

    @property
    def returncode(self) -> int | None:
        """None while running (or never started)."""
        return None if self._process is None else self._process.poll()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.send_signal(signal.SIGTERM):
            try:
                self._wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL: the server dies without a goodbye."""
        if self.send_signal(signal.SIGKILL):
            self._wait(timeout=None)

    def send_signal(self, number: int) -> bool:
        """Sends ``number`` if the process still runs; says whether it did."""
        process = self._process
        if process is None or process.poll() is not None:
            return False
        if self.new_session:
            os.killpg(process.pid, number)
        else:
            process.send_signal(number)
        return True

    def _wait(self, timeout: float | None) -> None:
        if self._process is not None:
            self._process.wait(timeout=timeout)


class GatewayProcess(ManagedProcess):
    """``distill-gateway`` in a subprocess, its output in ``log_path``. No load balancer sends
    it traffic, so it stops without a drain unless its config asks for one."""

    def __init__(
        self,
        work_dir: Path,
        config: dict[str, Any] | None = None,
        admin_token: str | None = None,
        port: int | None = None,
        environment: dict[str, str] | None = None,
        grpc: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.grpc_address: str | None = None  # host:port of its gRPC endpoint, when asked for
        if grpc:
            grpc_port = free_port()
            config = {**(config or {}), "grpc": {"port": grpc_port}}
            self.grpc_address = f"127.0.0.1:{grpc_port}"
        config = {"shutdown": {"drain_seconds": 0}, **(config or {})}
        self._extra_environment = dict(environment or {})
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        self.admin_token = admin_token
        work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = work_dir / f"gateway-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config or {}))
        self.log_path = work_dir / f"gateway-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    name = "gateway"

    def command(self) -> list[str]:
        return [
            str(BIN / "distill-gateway"),
            "--config", str(self.config_path),
            "--port", str(self.port),
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        """Ours, without DISTILL_GATEWAY_* (so a developer's shell cannot change a test), plus
        the token and whatever the caller asked for."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILL_GATEWAY_")}
        if self.admin_token is not None:
            env["DISTILL_GATEWAY_ADMIN_TOKEN"] = self.admin_token
        env["DISTILL_GATEWAY_FEEDBACK__TOKEN"] = LOCAL_FEEDBACK_TOKEN  # the traffic's labels
        return {**env, **self._extra_environment}

    def is_ready(self) -> bool:
        return httpx.get(f"{self.url}/v2/health/ready", timeout=1.0).status_code == 200

    def set_share(self, share: float, model: str | None = None) -> dict[str, Any]:
        """The student share of ``model`` (None: of the one model this gateway serves)."""
        response = httpx.put(
            self._traffic_url(model),
            json={"student_share": share},
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def share(self, model: str | None = None) -> float:
        response = httpx.get(self._traffic_url(model))
        response.raise_for_status()
        return float(response.json()["student_share"])

    def _traffic_url(self, model: str | None) -> str:
        return self.url + (traffic_path(model) if model else "/admin/traffic")

    def metrics_text(self) -> str:
        return httpx.get(f"{self.url}/metrics").text


class PrometheusProcess(ManagedProcess):
    """A real Prometheus server (Debian's package) scraping the given targets on loopback."""

    def __init__(
        self,
        tmp_dir: Path,
        jobs: dict[str, list[str]],
        scrape_interval: str = "1s",
        rule_files: list[Path] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = tmp_dir / f"prometheus-{self.port}"
        self.dir.mkdir(parents=True)
        self.targets = sum(len(targets) for targets in jobs.values())
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "rule_files": [str(path) for path in rule_files or []],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets}]}
                for job, targets in jobs.items()
            ],
        }
        self.config_path = self.dir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = self.dir / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None

    name = "Prometheus"

    def command(self) -> list[str]:
        return [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def is_ready(self) -> bool:
        """Ready once every target has been scraped."""
        result = self.query("sum(up)")
        return bool(result) and float(result[0]["value"][1]) == self.targets

    def query(self, promql: str, **params: str | float) -> list[dict[str, Any]]:
        """An instant query (or a range query when ``start``, ``end`` and ``step`` are given)."""
        endpoint = "query_range" if "start" in params else "query"
        response = httpx.get(
            f"{self.url}/api/v1/{endpoint}", params={"query": promql, **params}, timeout=10
        )
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


class RedisProcess(ManagedProcess):
    """A real Redis (Debian's ``redis-server``) on a free loopback port, with no persistence: a
    restart starts it empty, as a cache-like Redis in production may. With ``tls`` (certificate,
    key and CA files) it speaks TLS only, and ``url`` is a ``rediss://`` URL that trusts the CA;
    with ``password`` it requires one (not in ``url``). With ``users`` (name -> (password,
    ACL rights)) its default user is off and only those users get in; ``username`` and
    ``password`` are then the first one's."""

    def __init__(
        self,
        tmp_dir: Path,
        port: int | None = None,
        tls: tuple[Path, Path, Path] | None = None,
        password: str | None = None,
        users: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.tls = tls
        self.password = password
        self.users = users or {}
        self.username: str | None = None
        if self.users:
            self.username, (self.password, _) = next(iter(self.users.items()))
        self.url = (f"rediss://localhost:{self.port}/0?ssl_ca_certs={tls[2]}" if tls
                    else f"redis://127.0.0.1:{self.port}/0")  # fmt: skip
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self.dir = tmp_dir
        self.log_path = tmp_dir / f"redis-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    name = "Redis"

    def command(self) -> list[str]:
        command = [
            shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.dir),
        ]  # fmt: skip
        if self.tls:
            certificate, key, authority = self.tls
            command += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file",
                        str(certificate), "--tls-key-file", str(key), "--tls-ca-cert-file",
                        str(authority), "--tls-auth-clients", "no"]  # fmt: skip
        else:
            command += ["--port", str(self.port)]
        if self.users:
            acl = self.dir / f"users-{self.port}.acl"
            acl.write_text("user default off\n" + "".join(
                f"user {name} on >{password} {rights}\n"
                for name, (password, rights) in self.users.items()))  # fmt: skip
            acl.chmod(0o600)
            command += ["--aclfile", str(acl)]
        elif self.password:
            command += ["--requirepass", self.password]
        return command

    def is_ready(self) -> bool:
        import redis  # serving's dependency; imported here so the module loads without it

        client = redis.Redis.from_url(self.url, username=self.username, password=self.password,
                                      socket_timeout=1.0)  # fmt: skip
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()
