"""Ids for requests that name none: 128 random bits each, so no one can guess the id of another
client's request (a label for it needs its ticket as well: ``gateway.feedback_auth``)."""

from __future__ import annotations

import secrets


def new_request_id() -> str:
    """32 hex digits of the OS's randomness, like ``uuid4().hex`` without the UUID object."""
    return secrets.token_hex(16)
