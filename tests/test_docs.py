"""The documentation holds together: every relative link and anchor resolves, and the README stays one screen deep.

Checked files: README.md, results/README.md and every docs/*.md. A relative link (file, folder or image)
must exist in the repository; an ``#anchor``, in the same page or as ``file.md#anchor``, must be the slug
of a heading of the target under GitHub's rules. External http(s) links are only checked to be
well-formed: the tests run without a network.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "results/README.md", *sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md"))]

README_MAX_LINES = 300
FIRST_SCREEN = 100  # the README's quick start, scheduler example and results table start within these lines
FIRST_SCREEN_HEADINGS = ("Quick start", "Use a learned schedule in your own code", "Results at a glance")

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the text may hold one level of brackets (an image inside a link).
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks, inline code blanked."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)))
    return lines


def github_slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: the rendered text, lowercased, punctuation but - and _ dropped."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link or image renders as its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.lower()
    kept = "".join(
        ch for ch in text if ch in "-_ " or unicodedata.category(ch)[0] in "LN" or unicodedata.category(ch) == "Mn"
    )
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, duplicates numbered -1, -2, ... as GitHub does."""
    seen: dict[str, int] = {}
    result = set()
    text = path.read_text(encoding="utf-8")
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match is None:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link and image of a file, code excluded."""
    found = []
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        found += [(number, m.group(1)) for m in LINK.finditer(line)]
        reference = REFERENCE.match(line)
        if reference:
            found.append((number, reference.group(1)))
    return found


def link_problem(source: Path, target: str) -> str | None:
    """Why a link target of ``source`` is broken, or None."""
    if not target:
        return "empty target"
    parsed = urlparse(target)
    if parsed.scheme in ("http", "https"):
        if not parsed.netloc or " " in target or "." not in parsed.netloc:
            return "malformed URL"
        return None
    if parsed.scheme == "mailto":
        return None if "@" in parsed.path else "malformed mailto"
    if parsed.scheme or parsed.netloc:
        return f"unexpected scheme {parsed.scheme!r}"
    if parsed.path.startswith("/"):
        return "absolute path: links must be relative to the file"
    file = (source.parent / unquote(parsed.path)).resolve() if parsed.path else source.resolve()
    if not file.is_relative_to(ROOT):
        return "points outside the repository"
    if not file.exists():
        return f"{file.relative_to(ROOT).as_posix()} does not exist"
    if parsed.fragment:
        if file.suffix != ".md":
            return "an anchor into a file that is not Markdown"
        if unquote(parsed.fragment) not in anchors(file):
            return f"no heading of {file.relative_to(ROOT).as_posix()} has the anchor #{parsed.fragment}"
    return None


@pytest.mark.parametrize("doc", DOCS)
def test_links_resolve(doc: str) -> None:
    path = ROOT / doc
    assert path.is_file(), f"{doc} is missing"
    problems = [
        f"{doc}:{line}: ({target}) {why}" for line, target in links(path) if (why := link_problem(path, target))
    ]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_docs_index_lists_every_page() -> None:
    index = ROOT / "docs" / "README.md"
    listed = {Path(target.split("#")[0]).name for _, target in links(index)}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert not pages - listed, f"docs/README.md does not link {sorted(pages - listed)}"


def _readme_lines() -> list[str]:
    return (ROOT / "README.md").read_text(encoding="utf-8").splitlines()


def test_readme_is_one_screen_deep() -> None:
    lines = _readme_lines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines, at most {README_MAX_LINES}"


@pytest.mark.parametrize("heading", FIRST_SCREEN_HEADINGS)
def test_readme_first_screen(heading: str) -> None:
    """The quick start, the scheduler example and the results table start within the README's first lines."""
    lines = _readme_lines()
    numbers = [i for i, line in enumerate(lines, start=1) if re.fullmatch(rf"#+\s+{re.escape(heading)}\s*", line)]
    assert numbers, f"README.md has no heading {heading!r}"
    start = numbers[0]
    assert start <= FIRST_SCREEN, f"README.md: {heading!r} starts at line {start}, after line {FIRST_SCREEN}"
    following = lines[start:]
    end = next((i for i, line in enumerate(following) if line.startswith("#")), len(following))
    content = following[:end]
    marker = "|" if heading == "Results at a glance" else "```"
    first = next((start + 1 + i for i, line in enumerate(content) if line.lstrip().startswith(marker)), None)
    assert first is not None, f"README.md: the section {heading!r} has no {'table' if marker == '|' else 'code'}"
    assert first <= FIRST_SCREEN, f"README.md: the {heading!r} section's content starts at line {first}"


def test_readme_holds_the_ci_test_command() -> None:
    """CI (.ci/run) runs the README's test command verbatim: the two must stay byte-identical."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    command = next(line for line in ci if line.endswith("-m pytest"))
    assert command in _readme_lines(), f"README.md lost the test command that .ci/run runs: {command}"


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Faithful to the paper, and where we chose", "faithful-to-the-paper-and-where-we-chose"),
        ("`best.pt` and `last.pt`", "bestpt-and-lastpt"),
        ("Tasks it never saw: instance sets", "tasks-it-never-saw-instance-sets"),
        ("LeNet-5 at the paper's settings", "lenet-5-at-the-papers-settings"),
        ("A [linked](x.md) heading", "a-linked-heading"),
        ("snake_case and 1,000 steps", "snake_case-and-1000-steps"),
    ],
)
def test_github_slug(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_duplicate_headings_are_numbered(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Notes\n\n## Notes\n\n```\n# not a heading\n```\n\n## Notes\n", encoding="utf-8")
    assert anchors(page) == {"notes", "notes-1", "notes-2"}
