"""Docs are self-contained (issue 27 item 7): code cites `docs/research.md#<section>`, every such section exists,
and nothing cites files that are not in the repository (the research notes called DESIGN and REFERENCE)."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"docs/research\.md(#[a-z0-9-]+)?((?:,? #[a-z0-9-]+)*)")
MISSING_FILES = re.compile(r"\b(DESIGN|REFERENCE)(\.md| ?§| section \d)")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.+)$", markdown, flags=re.M)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in heads}


def _tracked_texts():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if name.endswith((".py", ".md", ".yaml", ".cfg", ".toml")) and (ROOT / name).is_file():
            yield name, (ROOT / name).read_text(encoding="utf-8")


def test_every_cited_research_section_exists():
    anchors = _anchors((ROOT / "docs" / "research.md").read_text(encoding="utf-8"))
    assert {"base-model", "spatiotemporal-query", "positional-encodings", "sampling", "training"} <= anchors
    cited = {}
    for name, text in _tracked_texts():
        for match in CITATION.finditer(text):
            for anchor in re.findall(r"#([a-z0-9-]+)", match.group(0)):
                cited.setdefault(anchor, name)
    assert len(cited) >= 10
    assert not {a: f for a, f in cited.items() if a not in anchors}, "citations of sections docs/research.md lacks"


def test_nothing_cites_notes_outside_the_repository():
    hits = [f"{name}: {line.strip()}" for name, text in _tracked_texts() for line in text.splitlines()
            if MISSING_FILES.search(line)]
    assert not hits, hits
