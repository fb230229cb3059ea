"""The README's examples work as written: each curl command and the tritonclient script run against
a real gateway (started as the README says, with its token) and print what the README shows under
them. And the documentation holds together: every docs/ page is linked from the README, and every
relative link in the README and docs/ reaches a file (and a heading, where it names one)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import pytest

from tests.servers import TestGateway

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
STARTS_THE_GATEWAY = (
    "DISTILL_GATEWAY_ADMIN_TOKEN=s3cret-admin-token-42 "
    "DISTILL_GATEWAY_FEEDBACK__TOKEN=s3cret-label-token-42 .venv/bin/distill-gateway --port 8000 "
    "--grpc-port 8001"
)


@dataclass
class Example:
    command: str
    prints: list[str] = field(default_factory=list)


def _blocks(section: str = "Try it with curl", language: str = "sh") -> list[str]:
    match = re.search(rf"^## {section}\n(.*?)^## ", README.read_text(), re.S | re.M)
    assert match, f"README.md has no '{section}' section"
    return re.findall(rf"^```{language}\n(.*?)^```", match.group(1), re.S | re.M)


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
        admin_token="s3cret-admin-token-42",
        environment={"DISTILL_GATEWAY_FEEDBACK__TOKEN": "s3cret-label-token-42"},
        grpc=True,
    ).start()
    yield gateway
    gateway.stop()


def test_the_readme_starts_the_gateway_the_way_this_test_does() -> None:
    assert _blocks()[0].strip() == STARTS_THE_GATEWAY


@pytest.mark.e2e
def test_every_curl_example_prints_what_the_readme_shows(readme_gateway: TestGateway) -> None:
    examples = _examples(_blocks()[1])
    assert len(examples) == 9
    for example in examples:
        command = example.command.replace("localhost:8000", readme_gateway.address)
        result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True,
                                text=True, timeout=30)  # fmt: skip
        assert result.returncode == 0, (example.command, result.stderr)
        shown = re.escape("\n".join(example.prints)).replace(re.escape("..."), ".*?")
        assert re.fullmatch(shown, result.stdout.strip(), re.S), (example.command, result.stdout)


def _with_addresses(text: str, gateway: TestGateway) -> str:
    text = text.replace("localhost:8001", str(gateway.grpc_address))
    return text.replace("localhost:8000", gateway.address)


@pytest.mark.e2e
def test_the_tritonclient_script_prints_what_the_readme_shows(readme_gateway: TestGateway) -> None:
    (script,) = _blocks("Try it with tritonclient", "python")
    lines = script.splitlines()
    # what it prints: the ``# `` lines right below a print()
    shown = [line[2:] for above, line in pairwise(lines)
             if "print(" in above and line.startswith("# ")]  # fmt: skip
    assert len(shown) == 2
    result = subprocess.run([sys.executable, "-c", _with_addresses(script, readme_gateway)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == shown


# The documentation's links. Headings and links inside fenced code are not markdown.
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (links by their words, no markup) in lower case,
    without punctuation but ``-`` and ``_``, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    """Every heading's anchor, a repeated one numbered as GitHub numbers it (``-1``, ``-2``)."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", page.read_text()), re.M):
        slug, n = _slug(heading), 1
        while (slug if n == 1 else f"{slug}-{n - 1}") in anchors:
            n += 1
        anchors.add(slug if n == 1 else f"{slug}-{n - 1}")
    return anchors


def _relative_links(page: Path) -> list[str]:
    links = LINK.findall(FENCE.sub("", page.read_text()))
    return [link for link in links if not re.match(r"[a-z]+:", link)]


def test_github_slugs_are_computed_as_github_does() -> None:
    assert _slug("Controller metrics (`--metrics-port`)") == "controller-metrics---metrics-port"
    assert _slug("The cascade: the student answers when it is sure") == (
        "the-cascade-the-student-answers-when-it-is-sure"
    )
    assert _slug("Decision quality: how often the controller is right") == (
        "decision-quality-how-often-the-controller-is-right"
    )


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / link.split("#")[0]).resolve() for link in _relative_links(README)}
    pages = sorted(DOCS.glob("*.md"))
    assert len(pages) >= 10
    assert [page.name for page in pages if page.resolve() not in linked] == []


def test_every_relative_link_reaches_its_file_and_heading() -> None:
    broken = []
    for page in _pages():
        for link in _relative_links(page):
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                broken.append(f"{page.name}: {link} (no such file)")
            elif anchor and (target.suffix != ".md" or anchor not in _anchors(target)):
                broken.append(f"{page.name}: {link} (no such heading)")
    assert broken == []


def test_the_link_check_finds_a_broken_link_and_a_missing_heading(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n[ok](page.md#a-page) [gone](nowhere.md) [no](page.md#nope)\n"
                    "```sh\n[inside a fence](ignored.md)\n```\n")  # fmt: skip
    assert _relative_links(page) == ["page.md#a-page", "nowhere.md", "page.md#nope"]
    assert _anchors(page) == {"a-page"}


def test_the_several_models_example_is_a_config_the_gateway_takes(tmp_path: Path) -> None:
    """docs/configuration.md's two-model example loads as written, from the repository root."""
    from gateway.config import load_settings

    section = re.search(r"^## Several models per gateway\n(.*?)(?=^## |\Z)",
                        (DOCS / "configuration.md").read_text(), re.S | re.M)  # fmt: skip
    assert section, "docs/configuration.md has no 'Several models per gateway' section"
    (example,) = re.findall(r"^```yaml\n(.*?)^```", section.group(1), re.S | re.M)
    (tmp_path / "models").symlink_to(ROOT / "models")  # the config sits in the repository root
    config = tmp_path / "gateway.yaml"
    config.write_text(example)
    served = {each.model: each for each in load_settings(config).served()}
    assert list(served) == ["digits", "text"]
    assert served["text"].traffic.student_share == 0.05
    assert served["digits"].traffic.student_share == 0.0
    assert {each.shadow.sample_rate for each in served.values()} == {0.1}
    text_pair = [served["text"].teacher.path, served["text"].student.path]  # type: ignore[union-attr]
    assert text_pair == [ROOT / "models/text/teacher.onnx", ROOT / "models/text/student.onnx"]
