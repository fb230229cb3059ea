"""A remote Triton Inference Server, through tritonclient's asyncio clients (gRPC or HTTP).

One long-lived client per backend. Readiness follows Triton's model readiness, polled in the
background so the request path never asks. Tensors travel as binary (numpy -> bytes), never JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import numpy as np
from tritonclient.utils import InferenceServerException

from gateway.backends.base import Backend, Lane
from gateway.backends.triton_metrics import compute_seconds
from gateway.config import InputConfig, TritonBackendConfig, WarmupConfig
from gateway.errors import BackendUnavailable, BadRequest, GatewayError, InferenceFailed
from gateway.signature import V2_TO_NUMPY, Signature, TensorSpec

log = logging.getLogger(__name__)

# Triton answers that mean "your request was wrong", by protocol.
_CLIENT_ERRORS = {"StatusCode.INVALID_ARGUMENT", "400"}
_UNAVAILABLE = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "503", "502", "504"}


class TritonBackend(Backend):
    def __init__(
        self,
        role: str,
        config: TritonBackendConfig,
        inputs: Mapping[str, InputConfig] | None = None,
        warmup: WarmupConfig | None = None,
    ) -> None:
        super().__init__(role, inputs, warmup)
        self._config = config
        self._client: Any = None
        self._ready = False
        self._poller: asyncio.Task[None] | None = None
        self._metrics_reader: asyncio.Task[None] | None = None
        if config.protocol == "grpc":
            import tritonclient.grpc.aio as module
        else:
            import tritonclient.http.aio as module
        self._module: Any = module

    @property
    def description(self) -> str:
        c = self._config
        return f"{self.role}: Triton {c.protocol}://{c.url} model '{c.model_name}'"

    async def load(self) -> None:
        """Reads the model's metadata into its signature. A lazily loaded student calls it every
        poll until it succeeds: whatever fails (Triton away, a signature this gateway cannot
        serve) closes the client it opened, and a load again closes the last one first."""
        await self.close()
        self._client = self._new_client()
        try:
            metadata = await self._client.get_model_metadata(
                self._config.model_name, self._config.model_version
            )
        except Exception as exc:
            await self.close()
            raise BackendUnavailable(
                f"{self.role}: cannot read model '{self._config.model_name}' from Triton at "
                f"{self._config.url}: {_message(exc)}"
            ) from exc
        try:
            self._signature = self.limited(_signature_of(_as_dict(metadata)))
        except (BackendUnavailable, KeyError, TypeError, ValueError) as exc:
            await self.close()
            why = exc.message if isinstance(exc, BackendUnavailable) else _message(exc)
            raise BackendUnavailable(
                f"{self.role}: model '{self._config.model_name}' on Triton at "
                f"{self._config.url} cannot be served: {why}"
            ) from exc
        await self._warm_up()
        self._ready = True
        self._poller = asyncio.create_task(self._poll_readiness(), name=f"ready-{self.role}")
        if self._config.metrics_url and self._metrics_reader is None:
            reader = self._read_compute_time()
            self._metrics_reader = asyncio.create_task(reader, name=f"metrics-{self.role}")

    async def _warm_up(self) -> None:
        """The first warm-up call only: Triton warms its own models (its ``model_warmup``); this
        one checks, before serving, that the model runs what the signature describes (all
        inputs) and opens the connection. It may not exceed Triton's max_batch_size."""
        try:
            first = self.warmup_calls()[0]
            await self.infer(first, [spec.name for spec in self.signature.outputs])
        except GatewayError as exc:
            await self.close()
            raise BackendUnavailable(
                f"{self.role}: model '{self._config.model_name}' on Triton at "
                f"{self._config.url} failed its warm-up call: {exc.message}"
            ) from exc

    async def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], lane: Lane = "live"
    ) -> dict[str, np.ndarray]:
        # Both lanes share the channel: Triton queues and schedules, and a cancelled call is
        # really cancelled, so nothing here is held by a shadow call or a timed-out one.
        if self._client is None:
            raise BackendUnavailable(f"{self.role} backend is not loaded")
        module = self._module
        request = []
        datatypes = {spec.name: spec.datatype for spec in self.signature.inputs}
        for name, array in inputs.items():
            tensor = module.InferInput(name, list(array.shape), datatypes[name])
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            request.append(tensor)
        wanted = [module.InferRequestedOutput(name) for name in output_names]
        try:
            result = await self._client.infer(
                self._config.model_name, request, self._config.model_version, outputs=wanted
            )
        except Exception as exc:
            raise _convert(self.role, exc) from exc
        return {name: result.as_numpy(name) for name in output_names}

    def is_ready(self) -> bool:
        return self._ready

    async def close(self) -> None:
        self._ready = False
        if self._metrics_reader is not None:
            self._metrics_reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._metrics_reader
            self._metrics_reader = None
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def _new_client(self) -> Any:
        c = self._config
        ca, key, chain = (
            str(path) if path else None
            for path in (c.tls.root_certificates, c.tls.private_key, c.tls.certificate_chain)
        )
        if c.protocol == "grpc":
            return self._module.InferenceServerClient(
                c.url, ssl=c.tls.enabled, root_certificates=ca, private_key=key,
                certificate_chain=chain,
            )  # fmt: skip
        context = None
        if c.tls.enabled:
            context = ssl.create_default_context(cafile=ca)
            if chain:
                context.load_cert_chain(chain, key)
        return self._module.InferenceServerClient(
            c.url, ssl=c.tls.enabled, ssl_context=context, conn_timeout=c.timeout_ms / 1000.0
        )

    async def _poll_readiness(self) -> None:
        while True:
            await asyncio.sleep(self._config.ready_poll_seconds)
            try:
                ready = bool(
                    await asyncio.wait_for(
                        self._client.is_model_ready(
                            self._config.model_name, self._config.model_version
                        ),
                        timeout=max(self._config.ready_poll_seconds, 0.5),
                    )
                )
            except Exception:  # any failure to answer means not ready
                ready = False
            if ready != self._ready:
                log.warning("%s: Triton model readiness %s -> %s", self.role, self._ready, ready)
            self._ready = ready

    async def _read_compute_time(self) -> None:
        """Triton's compute time for this model, re-read every ``metrics_poll_seconds``; a
        failed read keeps the last value and is logged once until reads succeed again."""
        c = self._config
        assert c.metrics_url is not None
        failing = False
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    seconds = await compute_seconds(session, c.metrics_url, c.model_name,
                                                    timeout=c.metrics_poll_seconds)  # fmt: skip
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    if not failing:
                        log.warning("%s: cannot read Triton's metrics at %s: %s", self.role,
                                    c.metrics_url, exc)  # fmt: skip
                    failing = True
                else:
                    failing = False
                    if seconds is not None:
                        self.remote_compute_seconds = seconds
                await asyncio.sleep(c.metrics_poll_seconds)


def _convert(role: str, exc: Exception) -> GatewayError:
    if isinstance(exc, InferenceServerException):
        status = str(exc.status())
        if status in _CLIENT_ERRORS:
            return BadRequest(f"{role} backend (Triton) rejected the request: {exc.message()}")
        if status in _UNAVAILABLE:
            return BackendUnavailable(f"{role} backend (Triton) unavailable: {exc.message()}")
        return InferenceFailed(f"{role} backend (Triton) failed: {exc.message()}")
    return BackendUnavailable(f"{role} backend (Triton) unavailable: {_message(exc)}")


def _message(exc: Exception) -> str:
    if isinstance(exc, InferenceServerException):
        return str(exc.message())
    return f"{exc.__class__.__name__}: {exc}"


def _as_dict(metadata: Any) -> dict[str, Any]:
    if isinstance(metadata, dict):
        return metadata
    from google.protobuf.json_format import MessageToDict

    result: dict[str, Any] = MessageToDict(metadata, preserving_proto_field_name=True)
    return result


def _signature_of(metadata: dict[str, Any]) -> Signature:
    def spec(tensor: dict[str, Any]) -> TensorSpec:
        datatype = tensor["datatype"]
        if datatype not in V2_TO_NUMPY:
            raise BackendUnavailable(f"tensor '{tensor['name']}' has unsupported type {datatype}")
        if datatype == "BF16":  # tritonclient would carry it; no Triton here serves it to test
            raise BackendUnavailable(
                f"tensor '{tensor['name']}' is BF16, which the Triton backend does not serve "
                "(untested: the test Triton's Python backend cannot hand BF16 to numpy); serve "
                "a BF16 model with the ONNX backend (kind: onnx)"
            )
        return TensorSpec(tensor["name"], datatype, tuple(int(size) for size in tensor["shape"]))

    return Signature(
        inputs=tuple(spec(t) for t in metadata.get("inputs", [])),
        outputs=tuple(spec(t) for t in metadata.get("outputs", [])),
    )
