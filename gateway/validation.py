"""Checked input, described the same way everywhere: strict pydantic models, their errors as one
line that names each key, and YAML files read into a mapping (a parser error as one line too).

The gateway (config, request bodies) and the controller (policy) share these.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """A model that rejects keys it does not know: a typo is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


def is_invalid_json(exc: ValidationError) -> bool:
    return exc.errors()[0]["type"] == "json_invalid"


def describe_body_errors(exc: ValidationError) -> str:
    """A request body's errors: not JSON at all, or the keys that are wrong."""
    if is_invalid_json(exc):
        return f"request body is not valid JSON: {exc.errors()[0]['msg']}"
    return describe_errors(exc, top="(body)")


def describe_errors(
    exc: ValidationError,
    *,
    top: str = "(top level)",
    hidden: Collection[str] = (),
    limit: int = 5,
) -> str:
    """``key.path: what is wrong; ...`` for the first ``limit`` errors. ``hidden`` names path
    parts pydantic adds but users never write (a tagged union's tag)."""
    errors = exc.errors()
    problems = []
    for error in errors[:limit]:
        key = ".".join(str(part) for part in error["loc"] if part not in hidden) or top
        problems.append(f"{key}: {_message(error)}")
    if len(errors) > limit:
        problems.append(f"and {len(errors) - limit} more")
    return "; ".join(problems)


def _message(error: Any) -> str:
    if error["type"] == "union_tag_invalid":  # the internal discriminator's name stays inside
        context = error["ctx"]
        return f"unknown kind '{context['tag']}': expected one of {context['expected_tags']}"
    return str(error["msg"]).removeprefix("Value error, ")


def read_yaml_mapping(path: Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """The file's top-level mapping ({} for an empty file); raises ``error`` with one line that
    names the file (and, for a parser error, the line and column)."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(f"{path}: not valid YAML{where}: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise error(f"{path}: the top level must be a mapping of keys")
    return loaded
