"""The documentation: the MkDocs site builds without a warning, and the README is a short front page whose links
into docs/ resolve and whose test command is the one CI runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS_LINK = re.compile(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built as `make docs` builds it (strict: any broken link, anchor or nav entry is an error)."""
    pytest.importorskip("mkdocs", reason="pip install 'cvtool[docs]'")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def readme_doc_links() -> list[tuple[str, str | None]]:
    return DOCS_LINK.findall(README.read_text(encoding="utf-8"))


def test_docs_build_strict_and_render_every_page(site):
    pages = sorted(p.relative_to(ROOT / "docs") for p in (ROOT / "docs").glob("*.md"))
    assert pages, "docs/ has no pages"
    for page in pages:
        html = site / "index.html" if page.stem == "index" else site / page.stem / "index.html"
        assert html.is_file(), f"docs/{page} was not rendered"


def test_readme_links_resolve_to_docs_pages_and_anchors(site):
    links = readme_doc_links()
    assert len(links) >= 10, "the README should link the docs pages"
    for target, anchor in links:
        page = ROOT / target
        assert page.is_file() and page.suffix == ".md", f"README links to a missing page: {target}"
        if anchor:
            html = site / ("" if page.stem == "index" else page.stem) / "index.html"
            assert f'id="{anchor}"' in html.read_text(encoding="utf-8"), f"README: no #{anchor} in {target}"


def test_readme_is_a_short_front_page_naming_the_ci_command():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200, "README.md is the front page: keep the depth in docs/"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").split()
    assert ci[-2:] == ["make", "test"], "CI's command changed: update the README's"
    assert re.search(r"^make test\b", text, re.M), "the README must show the test command CI runs: make test"
    assert re.search(r"^make train\b", text, re.M)
