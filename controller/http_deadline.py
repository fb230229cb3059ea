"""POSTs bounded by a total deadline each, several at once: webhook gates and notifications.

httpx's own timeouts bound each connect, read and write, not the call: a peer that sends a byte
every second keeps a call alive for ever. Here each call runs under ``anyio.fail_after``, which
cancels it (and closes its connection) when its seconds are up, whatever phase it is in; the
calls of one batch run concurrently, so a batch takes as long as its slowest call's limit.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio
import certifi
import httpx


class DeadlineExceeded(httpx.TimeoutException):
    """No complete answer within the call's total deadline."""


@dataclass(frozen=True)
class Post:
    url: str
    content: bytes
    seconds: float  # the whole call: connect, send, the answer's status, headers and body
    headers: Mapping[str, str] = field(default_factory=dict)


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every call: building one (reading the CA bundle) costs ~70 ms of CPU,
    more than the call to a nearby receiver; a client per batch would pay it each time."""
    return ssl.create_default_context(cafile=certifi.where())


def post_all(
    posts: list[Post], transport: httpx.AsyncBaseTransport | None = None
) -> list[httpx.Response | httpx.HTTPError]:
    """Each post's answer, or the ``httpx.HTTPError`` it ended with (``DeadlineExceeded`` past
    its seconds), in order; returns within the largest ``seconds`` (plus scheduling)."""
    results: list[httpx.Response | httpx.HTTPError] = [DeadlineExceeded("not sent") for _ in posts]

    async def one(client: httpx.AsyncClient, index: int, post: Post) -> None:
        try:
            with anyio.fail_after(post.seconds):
                results[index] = await client.post(
                    post.url, content=post.content, headers=dict(post.headers)
                )
        except TimeoutError:
            results[index] = DeadlineExceeded(f"no complete answer within {post.seconds:g} s")
        except httpx.HTTPError as exc:  # refused, reset, not HTTP
            results[index] = exc
        except Exception as exc:
            # a URL the policy took that cannot be reached at all (a port past 65535 fails inside
            # the connect's own task group, as an ExceptionGroup): this call's failure, never the
            # tick's or the other calls'
            results[index] = httpx.ConnectError(f"cannot post to {post.url}: {exc!r}")

    async def main() -> None:
        # timeout=None: the deadline above is the only limit, so it is the one reported
        client = httpx.AsyncClient(transport=transport, timeout=None, verify=_tls())
        async with client, anyio.create_task_group() as group:
            for index, each in enumerate(posts):
                group.start_soon(one, client, index, each)

    if posts:
        anyio.run(main)
    return results


def post(
    one: Post, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.Response | httpx.HTTPError:
    return post_all([one], transport)[0]
