"""The least any Python ASGI server can do for a request: uvicorn with a plain ASGI callable that
reads the body and sends a fixed V2 answer, with no framework at all. The benchmark's floor: what
uvicorn's HTTP parsing and two socket writes cost per request on this CPU, below which no gateway
served by uvicorn can go (``uvicorn tests.benchmarks.raw_noop:app``)."""

from __future__ import annotations

from typing import Any

import orjson

BODY = orjson.dumps({
    "model_name": "digits", "model_version": "1", "id": "noop",
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 10], "data": [0.0] * 10}],
})  # fmt: skip
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # lifespan: nothing to start
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
