"""The README's curl examples work as written: each command runs against a real gateway (started
as the README says, with its token) and prints what the README shows under it."""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import TestGateway

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = re.compile(r"^### Try it with curl\n(.*?)^## ", re.S | re.M)
STARTS_THE_GATEWAY = (
    "DISTILL_GATEWAY_ADMIN_TOKEN=s3cret-admin-token-42 "
    "DISTILL_GATEWAY_FEEDBACK__TOKEN=s3cret-label-token-42 .venv/bin/distill-gateway --port 8000"
)


@dataclass
class Example:
    command: str
    prints: list[str] = field(default_factory=list)


def _blocks() -> list[str]:
    match = SECTION.search(README.read_text())
    assert match, "README.md has no 'Try it with curl' section"
    return re.findall(r"^```sh\n(.*?)^```", match.group(1), re.S | re.M)


def _is_complete(command: str) -> bool:
    if command.endswith("\\"):
        return False
    try:
        shlex.split(command)
    except ValueError:  # a quote still open: the command goes on
        return False
    return True


def _examples(block: str) -> list[Example]:
    """Commands (across continuation lines and open quotes), each with the ``# `` lines right
    below it (what it prints); ``# `` lines after a blank line describe the next command."""
    examples: list[Example] = []
    pending: list[str] = []
    printing = False  # whether ``# `` lines still belong to the last command
    for line in block.splitlines():
        if pending or (line.strip() and not line.startswith("#")):
            pending.append(line)
            if _is_complete("\n".join(pending)):
                examples.append(Example("\n".join(pending)))
                pending, printing = [], True
        elif line.startswith("# ") and printing:
            examples[-1].prints.append(line[2:])
        elif not line.strip():
            printing = False
    assert not pending, f"an unfinished command: {pending}"
    return examples


@pytest.fixture(scope="module")
def readme_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestGateway]:
    gateway = TestGateway(
        tmp_path_factory.mktemp("readme"),
        {},
        admin_token="s3cret-admin-token-42",
        environment={"DISTILL_GATEWAY_FEEDBACK__TOKEN": "s3cret-label-token-42"},
    ).start()
    yield gateway
    gateway.stop()


def test_the_readme_starts_the_gateway_the_way_this_test_does() -> None:
    assert _blocks()[0].strip() == STARTS_THE_GATEWAY


def test_every_curl_example_prints_what_the_readme_shows(readme_gateway: TestGateway) -> None:
    examples = _examples(_blocks()[1])
    assert len(examples) == 8
    for example in examples:
        command = example.command.replace("localhost:8000", readme_gateway.address)
        result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True,
                                text=True, timeout=30)  # fmt: skip
        assert result.returncode == 0, (example.command, result.stderr)
        shown = re.escape("\n".join(example.prints)).replace(re.escape("..."), ".*?")
        assert re.fullmatch(shown, result.stdout.strip(), re.S), (example.command, result.stdout)
