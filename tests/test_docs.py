"""Citations of the repository's documents resolve: every ``docs/<page>.md#anchor`` in code, configs and docs names a
heading of that page, and every in-page link ``(#anchor)`` a heading of its own page."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"docs/([\w.-]+\.md)#([\w-]+)")
IN_PAGE_LINK = re.compile(r"\]\(#([\w-]+)\)")


def anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings, as GitHub makes them."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", page.read_text(encoding="utf-8"), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / f for f in out if f.endswith((".py", ".md", ".yaml")) and (ROOT / f).is_file()]


def test_every_docs_citation_names_a_heading():
    cited = [(path, page, anchor) for path in tracked_text_files()
             for page, anchor in CITATION.findall(path.read_text(encoding="utf-8"))]
    assert cited, "no citation found: the pattern or the file listing is broken"
    broken = [f"{path.relative_to(ROOT)}: docs/{page}#{anchor}" for path, page, anchor in cited
              if not (ROOT / "docs" / page).is_file() or anchor not in anchors(ROOT / "docs" / page)]
    assert not broken, broken


def test_in_page_links_name_a_heading():
    for page in sorted((ROOT / "docs").glob("*.md")):
        missing = set(IN_PAGE_LINK.findall(page.read_text(encoding="utf-8"))) - anchors(page)
        assert not missing, (page.name, missing)
