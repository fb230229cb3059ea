"""A batch of posts where one URL cannot be reached at all: that post fails on its own, the
others are answered, and nothing is raised to the tick."""

from __future__ import annotations

import httpx

from controller.http_deadline import Post, post_all


def test_an_unreachable_url_fails_its_own_post_and_no_other() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="ok")

    transport = httpx.MockTransport(answer)
    good = post_all([Post("http://receiver.test/hook", b"{}", 1.0)], transport)
    assert isinstance(good[0], httpx.Response) and good[0].status_code == 200
    # a port past 65535 parses as a URL and fails at connect time (OverflowError in the socket)
    results = post_all([Post("http://127.0.0.1:99999/", b"{}", 1.0),
                        Post("http://127.0.0.1:1/", b"{}", 1.0)])  # fmt: skip
    assert isinstance(results[0], httpx.ConnectError), results[0]
    assert "cannot post to http://127.0.0.1:99999/" in str(results[0])
    assert isinstance(results[1], httpx.HTTPError)  # refused: its own error, reported alone
