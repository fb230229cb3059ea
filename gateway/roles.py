"""The two roles a backend plays, and the protocols a request arrives by: one type each, used
wherever a role or protocol is named (routing, metrics labels, config, results)."""

from __future__ import annotations

from typing import Literal

Role = Literal["teacher", "student"]
ROLES: tuple[Role, ...] = ("teacher", "student")
NO_BACKEND = "none"  # the metrics' backend label for requests refused before routing

Protocol = Literal["http", "grpc"]
PROTOCOLS: tuple[Protocol, ...] = ("http", "grpc")
