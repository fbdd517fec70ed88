"""Every reference to the documentation in the code names a page and a heading that exist."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = re.compile(r"docs/([\w-]+\.md)(#[\w-]+)?((?:, #[\w-]+)*)")


def anchors(page: Path) -> set:
    """GitHub's anchors of a Markdown page's headings."""
    found = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"#+ (.*)", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            found.add("#" + text.replace(" ", "-"))
    return found


def test_every_docs_reference_resolves():
    files = subprocess.run(["git", "ls-files", "*.py", "*.yaml"], cwd=ROOT, capture_output=True, text=True).stdout
    references = []
    for name in files.split():
        text = (ROOT / name).read_text(encoding="utf-8")
        for match in REFERENCE.finditer(text):
            more = [part.strip() for part in match.group(3).split(",") if part.strip()]
            references += [(name, match.group(1), anchor) for anchor in [match.group(2), *more] if anchor]
            references.append((name, match.group(1), None))
    assert len(references) > 50
    for name, page, anchor in references:
        path = ROOT / "docs" / page
        assert path.is_file(), f"{name}: docs/{page} does not exist"
        if anchor is not None:
            assert anchor in anchors(path), f"{name}: docs/{page}{anchor} is not a heading there"
