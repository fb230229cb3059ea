"""Who may label a request: the client that was answered, or a trusted label pipeline.

Every answer carries a ticket (``x-feedback-ticket``: an HMAC-SHA256 of the model and the request
id under a key the gateway keeps), which a label must carry back; a label pipeline that labels
requests it did not send holds the feedback token instead (``Authorization: Bearer``). The threat
this answers: anyone who can call the V2 port could otherwise label other people's requests and
steer the accuracy gates either way. Replicas of a fleet verify each other's tickets when they
share the key: ``feedback.ticket_key``, else one derived from the admin token they share.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from pydantic import SecretStr

from gateway.errors import Forbidden, Unauthorized

TICKET_HEADER = "x-feedback-ticket"
TICKET_KEY_VARIABLE = "DISTILL_GATEWAY_FEEDBACK__TICKET_KEY"
TICKET_HEX = 32  # 128 bits of the HMAC: as hard to guess as the random request ids


def ticket_key(ticket_key: SecretStr | None, admin_token: SecretStr | None) -> bytes | None:
    """The configured key; else one derived from the admin token; None: a random one per
    process (tickets then verify only on the replica that answered)."""
    if ticket_key is not None:
        return ticket_key.get_secret_value().encode()
    if admin_token is not None:
        return hmac.digest(admin_token.get_secret_value().encode(),
                           b"distill-gateway feedback tickets", hashlib.sha256)  # fmt: skip
    return None


class FeedbackAuth:
    def __init__(self, model: str, key: bytes | None, token: SecretStr | None, open_: bool) -> None:
        self._prefix = model.encode() + b"\0"
        self._key = key or secrets.token_bytes(32)
        self._token = token.get_secret_value().encode() if token is not None else None
        self.open = open_

    def ticket(self, request_id: str) -> str:
        digest = hmac.digest(self._key, self._prefix + request_id.encode(), hashlib.sha256)
        return digest.hex()[:TICKET_HEX]

    def check(self, request_id: str, ticket: str | None, authorization: str | None) -> None:
        """Raises ``Unauthorized`` (no credential) or ``Forbidden`` (a wrong one) unless the
        label may be taken."""
        if self.open:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if self._token is not None and scheme.lower() == "bearer" and given:
            if hmac.compare_digest(given.strip().encode(), self._token):
                return
            raise Forbidden("invalid feedback token")
        if not ticket:
            raise Unauthorized(f"a label needs the {TICKET_HEADER} its answer carried (header "
                               f"{TICKET_HEADER} or field 'ticket'), or the feedback token as "
                               "'Authorization: Bearer <token>'")  # fmt: skip
        if not hmac.compare_digest(ticket.strip().lower().encode(),
                                   self.ticket(request_id).encode()):  # fmt: skip
            raise Forbidden(f"the {TICKET_HEADER} does not belong to request id {request_id!r}")
