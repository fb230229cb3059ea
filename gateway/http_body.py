"""Reads a request body within the size limit, decoding gzip or deflate when the client used it
(``tritonclient``'s ``request_compression_algorithm``).

Big bodies are worked on off the event loop: decompressing or decoding a 1 MiB JSON body takes
about 7 ms each, and every other request on the loop would wait for it.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Mapping
from typing import ParamSpec, TypeVar

from starlette.requests import Request
from starlette.types import Message, Receive

from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
OFF_LOOP_BYTES = 64 * 1024
"""Larger bodies are decompressed and decoded on a worker thread (64 KiB: about 0.4 ms of work,
well above the thread hop's cost)."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


async def off_loop_if_big(
    size: int, work: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs
) -> _R:
    """``work(*args)``, on a worker thread when ``size`` is over ``OFF_LOOP_BYTES``."""
    if size > OFF_LOOP_BYTES:
        return await asyncio.to_thread(work, *args, **kwargs)
    return work(*args, **kwargs)


async def read_body(request: Request, limit: int) -> bytes:
    return await read_asgi_body(request.receive, request.headers, limit)


class ClientGone(Exception):
    """The client disconnected before its body arrived: there is no one to answer."""


async def read_asgi_body(
    receive: Receive, headers: Mapping[str, str], limit: int, timeout: float | None = None
) -> bytes:
    """The body from ASGI ``http.request`` messages, within ``limit`` bytes and ``timeout``
    seconds (``TimeoutError``), decompressed."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    first = await receive()  # most bodies come whole with their headers: no timer for them
    if first["type"] == "http.request" and not first.get("more_body", False):
        chunks.append(_checked(first, 0, limit))
    else:
        async with asyncio.timeout(timeout):
            message = first
            while True:
                chunk = _checked(message, size, limit)
                size += len(chunk)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
                message = await receive()
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    return await off_loop_if_big(len(body), _decompress, body, encoding, limit)


def _checked(message: Message, size: int, limit: int) -> bytes:
    """One message's chunk, with ``size`` bytes already read."""
    if message["type"] == "http.disconnect":
        raise ClientGone
    chunk: bytes = message.get("body", b"")
    if size + len(chunk) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return chunk


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    wbits = _DECODERS.get(encoding)
    if wbits is None:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or identity"
        )
    decoder = zlib.decompressobj(wbits)
    try:
        plain = decoder.decompress(body, limit)
    except zlib.error as exc:
        raise BadRequest(f"request body is not valid {encoding}: {exc}") from exc
    if decoder.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request body exceeds the limit of {limit} bytes")
    return plain
