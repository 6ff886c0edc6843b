"""The documents a user reads first stay short and stay true: the README fits in 12 KB, every
relative link in the README, BENCHMARKS and docs/ reaches a file and a heading that exist, and
the README's command index names only entry points that exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
DOCUMENTS = sorted([README, *ROOT.glob("BENCHMARKS*.md"), *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def without_code(text: str) -> str:
    """The text outside fenced code blocks, where links and headings are markdown."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", without_code(path.read_text()), re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_readme_is_a_front_page():
    assert README.stat().st_size <= 12_000


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(document):
    broken = []
    for target in LINK.findall(without_code(document.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not this test's business
        name, _, anchor = target.partition("#")
        path = (document.parent / name).resolve() if name else document
        if not path.exists():
            broken.append(f"{target}: no file {path}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.name}")
    assert not broken, broken


TEST_REFERENCE = re.compile(r"tests/(test_\w+\.py)::(test_\w+)")


def test_every_test_a_document_names_exists():
    """The docs say which test guards what (docs/spark-internals.md): a renamed or deleted
    test must take its mention with it, or the page promises a guard that is gone."""
    missing = []
    for document in DOCUMENTS:
        for module, name in TEST_REFERENCE.findall(document.read_text()):
            source = ROOT / "tests" / module
            if not source.exists() or f"def {name}(" not in source.read_text():
                missing.append(f"{document.name}: tests/{module}::{name}")
    assert not missing, missing


def test_readme_command_index_names_existing_entry_points():
    index = without_code(README.read_text()).split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    modules = re.findall(r"^\| `python -m ([\w.]+)", index, re.M)
    dev = re.findall(r"^\| `\./dev (\w+)`", index, re.M)
    assert "emr_serverless_job" in modules and "fruits_ops.backfill" in modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module
        main = "__main__" if "." not in module else None
        if main:
            assert importlib.util.find_spec(f"{module}.{main}") is not None, module
    script = (ROOT / "dev").read_text()
    cases = set(re.findall(r"^  (\w+)\)", script, re.M))
    assert dev and set(dev) <= cases, set(dev) - cases


def test_readme_first_deployment_packages_as_the_guide_does():
    def packaging_line(text: str) -> str:
        section = text.split("\n## First deployment\n", 1)[1].split("\n## ", 1)[0]
        (step,) = re.findall(r"^3\. \*\*The artifacts.*?(?=^\d\. )", section, re.M | re.S)
        return re.findall(r"(\./dev package [^`\n]*?)\s*(?:`|$)", step, re.M)[0].strip()

    guide = (ROOT / "docs" / "deploy.md").read_text()
    assert packaging_line(README.read_text()) == packaging_line(guide)
