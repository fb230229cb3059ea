"""tritonclient.http, unchanged, pointed at the gateway: it must not notice it is not Triton."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import tritonclient.http as triton_http

from models.data import Split
from tests.servers import TestGateway


@pytest.fixture(scope="module")
def client(gateway: TestGateway) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(gateway.address)


def test_health_and_metadata(client: triton_http.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert not client.is_model_ready("unknown")
    metadata = client.get_model_metadata("digits")
    assert [i["name"] for i in metadata["inputs"]] == ["pixels"]
    assert [o["name"] for o in metadata["outputs"]] == ["logits"]


@pytest.mark.parametrize("batch", [1, 2, 17, 64, 256])
@pytest.mark.parametrize("binary_input", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize(
    "requested", [None, True, False], ids=["no-outputs", "binary-out", "json-out"]
)
def test_infer_equals_direct_onnx_runtime(
    client: triton_http.InferenceServerClient,
    test_split: Split,
    teacher_direct: Callable[[np.ndarray], np.ndarray],
    batch: int,
    binary_input: bool,
    requested: bool | None,
) -> None:
    x = np.resize(test_split.x, (batch, 64)).astype(np.float32)
    pixels = triton_http.InferInput("pixels", list(x.shape), "FP32")
    pixels.set_data_from_numpy(x, binary_data=binary_input)
    outputs = None
    if requested is not None:
        outputs = [triton_http.InferRequestedOutput("logits", binary_data=requested)]
    result = client.infer("digits", [pixels], outputs=outputs, request_id=f"compat-{batch}")
    assert result.get_response()["id"] == f"compat-{batch}"
    logits = result.as_numpy("logits")
    assert logits is not None and logits.shape == (batch, 10)
    np.testing.assert_allclose(logits, teacher_direct(x), rtol=1e-5, atol=1e-5)


def test_errors_reach_tritonclient_as_exceptions_with_the_message(
    client: triton_http.InferenceServerClient,
) -> None:
    from tritonclient.utils import InferenceServerException

    pixels = triton_http.InferInput("pixels", [1, 63], "FP32")
    pixels.set_data_from_numpy(np.zeros((1, 63), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"shape \[1, 63\]"):
        client.infer("digits", [pixels])
