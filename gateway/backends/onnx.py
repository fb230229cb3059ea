"""ONNX Runtime in process: the embedded default backend.

Calls run on small thread pools of the backend's own (ONNX Runtime releases the GIL), so a slow
teacher can never take the student's threads, shadow comparisons never take live traffic's, and
the event loop never waits on a model of any size. The exception is a tiny one: a live call on
the CPU that the calls measured so far say will take less than ``inline_below_us`` runs on the
event loop, because the hop to a thread and back costs more than such a model (a distilled
student runs a row in about 10 us; the hop, its wake-ups and their jitter cost several times
that, and most of the p99). A call that grows slower sends the next ones back to the threads.
Only a small model is ever a candidate (its file at most ``inline_max_file_bytes``), so whether a
teacher runs inline never depends on how fast this machine happens to run it; and the estimate
learns from live calls of a few rows only, per call, never from shadow batches.

A call cannot be stopped once its thread runs it: a timed-out call is abandoned, and its thread
stays busy until the model returns. Those are counted, and a pool whose every thread is stuck in
one refuses new work at once (so the circuit breaker opens) instead of queueing it behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import ml_dtypes
import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from gateway.backends.base import Backend, Lane, batch_rows
from gateway.config import InputConfig, OnnxBackendConfig, WarmupConfig
from gateway.errors import BackendUnavailable, GatewayError, InferenceFailed, ModelRejectedInput
from gateway.signature import Signature, TensorSpec

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",  # fed and read as OrtValues: see _run_ort_values
    "tensor(string)": "BYTES",  # UTF-8 text: ONNX Runtime takes and gives str elements
}
INLINE_MAX_ROWS = 8
"""Calls of more rows (a client's batch, a dynamic batch) always run on the backend's threads."""
_ORT_QUIET = 4  # fatal only: hides the error line ORT prints when CUDA fails to load
_ORT_DEFAULT_SEVERITY = 2  # warning; ORT has no getter for the current value


class _ThreadPool:
    """One lane's threads, and how many of them still run calls nobody waits for."""

    def __init__(self, name: str, threads: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self.threads = threads
        self.abandoned = 0


@dataclass(frozen=True)
class LoadedModel:
    config: OnnxBackendConfig
    session: Session
    signature: Signature


class OnnxBackend(Backend):
    measures_cpu = True

    def __init__(
        self,
        role: str,
        config: OnnxBackendConfig,
        shadow_threads: int = 1,
        inputs: Mapping[str, InputConfig] | None = None,
        warmup: WarmupConfig | None = None,
    ) -> None:
        super().__init__(role, inputs, warmup)
        self._config = config
        self._pools: dict[Lane, _ThreadPool] = {
            "live": _ThreadPool(f"onnx-{role}", config.max_concurrency),
            "shadow": _ThreadPool(f"onnx-{role}-shadow", shadow_threads),
        }
        self._executor = self._pools["live"].executor  # loading and warm-up
        self._session: Session | None = None
        self.device = "unloaded"
        self._inline_below = config.inline_below_us / 1e6
        self._seconds_per_call = float("inf")  # learned from live calls; none inline until then
        self.inline_calls = 0
        self._inline_candidate = False  # a small model on the CPU: set once it is loaded
        self.clock = time.perf_counter  # what calls are timed with (a test moves it)

    @property
    def description(self) -> str:
        return f"{self.role}: ONNX Runtime in process, {self._config.path.name} on {self.device}"

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        before = _resident_bytes()
        self._session = await loop.run_in_executor(self._executor, self._open_session)
        self._signature = self.limited(signature_of(self._session))
        self._inline_candidate = self._small_on_cpu(self._config)
        await self._warm_up()
        self.cpu_seconds["live"] = 0.0  # traffic's, not the warm-up's
        after = _resident_bytes()
        if before is not None and after is not None:  # backends load one at a time
            self.memory_bytes = max(0, after - before)

    async def open(self, path: Path) -> LoadedModel:
        """Another model file read into a session of this backend's kind, not yet served: the
        caller checks its signature, then ``adopt``s it or drops it."""
        config = self._config.model_copy(update={"path": path})
        loop = asyncio.get_running_loop()
        session = await loop.run_in_executor(self._executor, self._open_session, config)
        return LoadedModel(config, session, self.limited(signature_of(session)))

    async def adopt(self, loaded: LoadedModel) -> None:
        """Serves ``loaded`` from now on; calls already running finish on the old session."""
        self._config, self._session, self._signature = (
            loaded.config,
            loaded.session,
            loaded.signature,
        )
        self._inline_candidate = self._small_on_cpu(loaded.config)
        await self._warm_up()

    async def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], lane: Lane = "live"
    ) -> dict[str, np.ndarray]:
        session = self._session
        if session is None:
            raise BackendUnavailable(f"{self.role} backend is not loaded")
        pool = self._pools[lane]
        if pool.abandoned >= pool.threads:
            raise BackendUnavailable(
                f"{self.role}: all {pool.threads} {lane} threads still run calls that timed out"
            )
        names = list(output_names)
        rows = batch_rows(inputs)
        if lane == "live" and self._inline_expected(rows):
            return self._run_inline(session, names, inputs, rows)
        future = pool.executor.submit(_run_timed, session, names, inputs, self.clock)
        try:
            results, cpu, wall = await asyncio.wrap_future(future)
        except asyncio.CancelledError:  # a timeout, or the client went away
            if not future.cancel() and not future.done():  # already running: cannot be stopped
                self._abandon(pool, lane, future)
            raise
        except Exception as exc:  # ORT raises its own pybind types; convert at the boundary
            raise self._failure(exc) from exc
        self.cpu_seconds[lane] += cpu
        if lane == "live":
            self._learn(wall, rows)
        return dict(zip(names, results, strict=True))

    def _failure(self, exc: Exception) -> GatewayError:
        """ONNX Runtime's error as ours: INVALID_ARGUMENT is the model refusing this input (a
        token id past its vocabulary), anything else the backend failing."""
        if isinstance(exc, InvalidArgument):
            detail = str(exc).split("INVALID_ARGUMENT : ", 1)[-1]
            return ModelRejectedInput(f"the {self.role} model refused this request's input: "
                                      f"{detail}")  # fmt: skip
        return InferenceFailed(f"{self.role} backend failed: {exc}")

    def run_inline(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray] | None:
        session, rows = self._session, batch_rows(inputs)
        if session is None or not self._inline_expected(rows):
            return None
        return self._run_inline(session, list(output_names), inputs, rows)

    def _run_inline(
        self, session: Session, names: list[str], inputs: Mapping[str, np.ndarray],
        rows: int,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        try:
            results, cpu, wall = _run_timed(session, names, inputs, self.clock)
        except Exception as exc:
            raise self._failure(exc) from exc
        self.inline_calls += 1
        self.cpu_seconds["live"] += cpu
        self._learn(wall, rows)
        return dict(zip(names, results, strict=True))

    def _small_on_cpu(self, config: OnnxBackendConfig) -> bool:
        """Only a CPU session of a small file may run on the event loop."""
        return self.device == "cpu" and config.path.stat().st_size <= config.inline_max_file_bytes

    def _inline_expected(self, rows: int) -> bool:
        """Whether a live call of ``rows`` rows runs on the event loop: a small model on the CPU,
        a call of a few rows, and the live calls measured so far quicker than the threshold."""
        return (
            rows <= INLINE_MAX_ROWS
            and self._inline_candidate
            and self._seconds_per_call < self._inline_below
        )

    def _learn(self, wall_seconds: float, rows: int) -> None:
        """The expected seconds of a small live call: a moving average, so a model that slows
        down (a busy machine) soon leaves the event loop."""
        if rows > INLINE_MAX_ROWS:
            return  # a batch says little about a call of one row
        if self._seconds_per_call == float("inf"):
            self._seconds_per_call = wall_seconds
        else:
            self._seconds_per_call += 0.1 * (wall_seconds - self._seconds_per_call)

    def _abandon(self, pool: _ThreadPool, lane: Lane, future: Future[_Timed]) -> None:
        loop = asyncio.get_running_loop()
        pool.abandoned += 1
        self.abandoned_total += 1

        def returned() -> None:
            pool.abandoned -= 1
            if not future.cancelled() and future.exception() is None:
                self.cpu_seconds[lane] += future.result()[1]  # spent, whoever waited

        def in_the_loop(_: Future[_Timed]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed first: nothing to count
                loop.call_soon_threadsafe(returned)

        future.add_done_callback(in_the_loop)

    def abandoned_in(self, lane: Lane) -> int:
        return self._pools[lane].abandoned

    def is_ready(self) -> bool:
        return self._session is not None

    async def close(self) -> None:
        self._session = None
        for pool in self._pools.values():
            pool.executor.shutdown(wait=False, cancel_futures=True)

    def _open_session(self, config: OnnxBackendConfig | None = None) -> Session:
        config = config or self._config
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = 1
        # Idle ORT threads otherwise spin and steal CPU from the server's own threads.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = str(config.path)
        try:
            session = self._session_on_best_device(path, options)
        except Exception as exc:
            raise BackendUnavailable(f"{self.role}: cannot load {path}: {exc}") from exc
        return _for_its_types(session)

    def _session_on_best_device(
        self, path: str, options: ort.SessionOptions
    ) -> ort.InferenceSession:
        wanted = self._config.device
        if wanted == "cpu":
            self.device = "cpu"
            return ort.InferenceSession(path, options, providers=[CPU])
        session = _try_cuda_session(path, options)
        if session is not None:
            self.device = "cuda"
            log.info("%s: device %s -> CUDA", self.role, wanted)
            return session
        reason = "ONNX Runtime could not use CUDA (no GPU, or CUDA 13 / cuDNN 9 missing)"
        if wanted == "cuda":
            raise BackendUnavailable(f"{self.role}: device is 'cuda' but {reason}")
        self.device = "cpu"
        log.info("%s: device auto -> CPU, because %s", self.role, reason)
        return ort.InferenceSession(path, options, providers=[CPU])

    async def _warm_up(self) -> None:
        """The warm-up calls (by default one small and one larger batch, so the first real
        requests do not pay for allocation, then one small again, warm, for the first estimate
        of a call's time)."""
        for call in self.warmup_calls():
            self._seconds_per_call = float("inf")  # learned afresh from the warm call
            await self.infer(call, [output.name for output in self.signature.outputs])


_Timed = tuple[list[np.ndarray], float, float]


def _run_timed(
    session: Session,
    names: list[str],
    inputs: Mapping[str, np.ndarray],
    clock: Callable[[], float],
) -> _Timed:
    """The call, the CPU time it took, and its wall time: with intra_op_threads 1, ONNX Runtime
    computes in the calling thread, so that thread's CPU time is the call's."""
    started, cpu_started = clock(), time.thread_time()
    results = session.run(names, inputs)
    return results, time.thread_time() - cpu_started, clock() - started


_BF16 = np.dtype(ml_dtypes.bfloat16)
_ONNX_BFLOAT16 = 16  # TensorProto.BFLOAT16 in ONNX's enum (the onnx package is not a dependency)


class Bf16Session:
    """A session of a model with a BF16 input or output, whose ``run`` goes through OrtValues.
    Chosen once, at load: every other model keeps its own ``InferenceSession.run``, untouched."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session

    def run(self, names: list[str], inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return _run_ort_values(self.session, names, inputs)

    def get_inputs(self) -> list[ort.NodeArg]:
        return list(self.session.get_inputs())

    def get_outputs(self) -> list[ort.NodeArg]:
        return list(self.session.get_outputs())


Session: TypeAlias = "ort.InferenceSession | Bf16Session"


def _for_its_types(session: ort.InferenceSession) -> Session:
    """The session, or for a model with BF16 tensors its ``Bf16Session``; ``BackendUnavailable``
    for BF16 beside a string input (OrtValues hold no strings, ``session.run`` takes no BF16)."""
    nodes = [*session.get_inputs(), *session.get_outputs()]
    bf16 = [node.name for node in nodes if node.type == "tensor(bfloat16)"]
    if not bf16:
        return session
    texts = [node.name for node in session.get_inputs() if node.type == "tensor(string)"]
    if texts:
        raise BackendUnavailable(
            f"BF16 tensor(s) {bf16} beside string input(s) {texts}: ONNX Runtime's Python API "
            "cannot feed both in one call (strings only through session.run, BF16 only as "
            "OrtValues)"
        )
    return Bf16Session(session)


def _run_ort_values(
    session: ort.InferenceSession, names: list[str], inputs: Mapping[str, np.ndarray]
) -> list[np.ndarray]:
    """``session.run`` for a model with BF16 tensors. ONNX Runtime's Python API takes no
    ml_dtypes array ("Numpy_type 256 can't be converted") and gives no numpy view of a BF16
    output, so BF16 inputs go in as their uint16 bits typed BFLOAT16, and each output is bound
    to the CPU and copied out once (BF16 by its bytes)."""
    binding = session.io_binding()
    for name, array in inputs.items():
        array = np.ascontiguousarray(array)
        if array.dtype == _BF16:
            value = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                array.view(np.uint16), onnx_element_type=_ONNX_BFLOAT16
            )
        else:
            value = ort.OrtValue.ortvalue_from_numpy(array)
        binding.bind_ortvalue_input(name, value)
    for name in names:
        binding.bind_output(name, "cpu")
    session.run_with_iobinding(binding)
    return [_bf16_copy(value) if value.data_type() == "tensor(bfloat16)" else value.numpy()
            for value in binding.get_outputs()]  # fmt: skip


def _bf16_copy(value: ort.OrtValue) -> np.ndarray:
    out = np.empty(value.shape(), dtype=np.uint16)
    if out.nbytes:
        ctypes.memmove(out.ctypes.data, value.data_ptr(), out.nbytes)
    return out.view(_BF16)


def _resident_bytes() -> int | None:
    """This process's resident memory (Linux), or None where /proc has no statm."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


_cuda_lock = threading.Lock()
_cuda_failed = False


def _try_cuda_session(path: str, options: ort.SessionOptions) -> ort.InferenceSession | None:
    """A CUDA session, or None when CUDA is not really usable (checked once per process).

    ``get_available_providers()`` lists CUDA whenever the build has it, GPU or not, so only the
    session's own providers tell. ORT's error lines about the failed load are silenced: the caller
    says what happened in one line of its own.
    """
    global _cuda_failed
    if CUDA not in ort.get_available_providers():
        return None
    with _cuda_lock:  # the logger severity is process-wide
        if _cuda_failed:
            return None
        ort.set_default_logger_severity(_ORT_QUIET)
        try:
            session = ort.InferenceSession(path, options, providers=[CUDA, CPU])
        finally:
            ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)
        if session.get_providers()[0] == CUDA:
            return session
        _cuda_failed = True
        return None


def signature_of(session: Session) -> Signature:
    def spec(node: ort.NodeArg) -> TensorSpec:
        if node.type not in _ORT_TYPES:
            raise BackendUnavailable(f"tensor '{node.name}' has unsupported type {node.type}")
        shape = tuple(size if isinstance(size, int) else -1 for size in node.shape)
        names = tuple(size if isinstance(size, str) else None for size in node.shape)
        datatype = _ORT_TYPES[node.type]
        return TensorSpec(node.name, datatype, shape, text=datatype == "BYTES",
                          axis_names=names if any(names) else None)  # fmt: skip

    return Signature(
        inputs=tuple(spec(node) for node in session.get_inputs()),
        outputs=tuple(spec(node) for node in session.get_outputs()),
    )
