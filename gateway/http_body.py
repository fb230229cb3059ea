"""Reads a request body within the size limit, decoding gzip or deflate when the client used it
(``tritonclient``'s ``request_compression_algorithm``)."""

from __future__ import annotations

import zlib

from starlette.requests import Request

from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    return _decompress(body, encoding, limit)


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
