"""TLS on the gateway's own listeners: HTTPS for the V2 API, admin and metrics, gRPC over TLS,
with certificates from a throwaway CA (trustme), checked by real clients (httpx, tritonclient)."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import trustme

from tests.servers import ADMIN_TOKEN, BIN, TestGateway, free_port

pytestmark = pytest.mark.e2e
BODY = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}


class _TlsGateway(TestGateway):
    def __init__(self, tmp_dir: Path, config: dict[str, object], ca_file: Path) -> None:
        super().__init__(tmp_dir, config)
        self.url = f"https://{self.address}"
        self.ca_file = ca_file
        self.admin_url = ""

    def is_ready(self) -> bool:
        ready = httpx.get(f"{self.url}/v2/health/ready", verify=self._context(), timeout=1.0)
        return ready.status_code == 200

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_TlsGateway]:
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, ca_file = tmp / "server.pem", tmp / "server.key", tmp / "ca.pem"
    certfile.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(ca_file))
    grpc_port, admin_port = free_port(), free_port()
    gateway = _TlsGateway(tmp, {
        "shadow": {"sample_rate": 0.0},
        "tls": {"certfile": str(certfile), "keyfile": str(keyfile)},
        "grpc": {"port": grpc_port}, "admin": {"port": admin_port},
    }, ca_file).start()  # fmt: skip
    gateway.grpc_address = f"127.0.0.1:{grpc_port}"
    gateway.admin_url = f"https://127.0.0.1:{admin_port}"
    yield gateway
    gateway.stop()


def test_https_serves_inference_admin_and_metrics(tls_gateway: _TlsGateway) -> None:
    context = tls_gateway._context()
    answer = httpx.post(f"{tls_gateway.url}/v2/models/digits/infer", json=BODY, verify=context)
    assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [1, 10]
    assert "gateway_requests_total" in httpx.get(f"{tls_gateway.url}/metrics", verify=context).text
    admin = tls_gateway.admin_url
    moved = httpx.put(f"{admin}/admin/traffic", json={"student_share": 0.0}, verify=context,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip
    assert moved.status_code == 200
    assert "listening on https://127.0.0.1" in tls_gateway.log()


def test_plain_http_and_an_unknown_ca_are_refused(tls_gateway: _TlsGateway) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{tls_gateway.address}/v2/health/live", timeout=3)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_gateway.url}/v2/health/live", timeout=3)  # the system's CAs only


def test_tritonclient_grpc_over_tls(tls_gateway: _TlsGateway) -> None:
    assert tls_gateway.grpc_address is not None
    client = triton_grpc.InferenceServerClient(
        tls_gateway.grpc_address, ssl=True, root_certificates=str(tls_gateway.ca_file)
    )
    try:
        assert client.is_model_ready("digits")
        tensor = triton_grpc.InferInput("pixels", [1, 64], "FP32")
        tensor.set_data_from_numpy(np.full((1, 64), 0.5, np.float32))
        result = client.infer("digits", [tensor])
        logits = result.as_numpy("logits")
        assert logits is not None and logits.shape == (1, 10)
    finally:
        client.close()


def test_a_missing_certificate_is_a_start_up_error(tmp_path: Path) -> None:
    def start(tls: str) -> subprocess.CompletedProcess[str]:
        config = tmp_path / "gateway.yaml"
        config.write_text(f"tls: {tls}\n")
        command = [
            str(BIN / "distill-gateway"),
            "--config",
            str(config),
            "--port",
            str(free_port()),
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    missing = start(f"{{certfile: {tmp_path}/none.pem, keyfile: {tmp_path}/none.key}}")
    assert missing.returncode == 2
    assert f"tls.certfile: no such file: {tmp_path}/none.pem" in missing.stderr
    half = start(f"{{certfile: {tmp_path}/none.pem}}")
    assert half.returncode == 2 and "tls.certfile and tls.keyfile go together" in half.stderr
