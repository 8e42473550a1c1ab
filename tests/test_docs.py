"""The Markdown files: every relative link and image resolves, every #anchor names a heading, and
README.md stays a front page (short, a picture near the top). Text only: no TensorFlow."""
import os
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIPPED = {".venv", "outputs", ".git", ".pytest_cache", ".whl", "shared", "node_modules", "bench/results"}
README_MAX_LINES = 200
FIRST_IMAGE_WITHIN = 40

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`)(?:(?!\n[ \t]*\n).)+?(?<!`)\1(?!`)", re.S)  # not across a blank line
MD_LINK = re.compile(r"(!?)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"<(img|a)\b[^>]*?\b(src|href)\s*=\s*[\"']([^\"']*)[\"']", re.I)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$", re.M)


def markdown_files(root=ROOT):
    """Every *.md of the repository outside virtual environments, run outputs, data and caches."""
    found = []
    for folder, subfolders, files in os.walk(root):
        relative = Path(folder).relative_to(root).as_posix()
        subfolders[:] = sorted(name for name in subfolders
                               if (name if relative == "." else f"{relative}/{name}") not in SKIPPED)
        found += [Path(folder) / name for name in sorted(files) if name.endswith(".md")]
    return found


def without_fences(text):
    """The text with fenced code blocks blanked, kept line for line."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def without_code(text):
    """The text with fenced blocks and code spans blanked, where a `[x](y)` is code, not a link."""
    return CODE_SPAN.sub(lambda m: " " * len(m.group(0)), without_fences(text))


def slug(heading):
    """GitHub's anchor of a heading: lowercase, punctuation removed except '-' and '_', spaces to '-'."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


def anchors(path):
    """The anchors GitHub gives the headings of `path` (a repeated one gets -1, -2, ...)."""
    seen, result = {}, set()
    for match in HEADING.finditer(without_fences(path.read_text(encoding="utf-8"))):
        base = slug(match.group(2))
        name = base if base not in seen else f"{base}-{seen[base]}"
        seen[base] = seen.get(base, 0) + 1
        result.add(name)
    return result


def links(path):
    """(line number, kind, target) of every link and image in `path`, Markdown and HTML."""
    text = without_code(path.read_text(encoding="utf-8"))
    found = [(m.start(), "image" if m.group(1) else "link", m.group(2)) for m in MD_LINK.finditer(text)]
    found += [(m.start(), "image" if m.group(1).lower() == "img" else "link", m.group(3))
              for m in HTML_LINK.finditer(text)]
    return sorted((text.count("\n", 0, start) + 1, kind, target) for start, kind, target in found)


def broken_links(path, root=ROOT):
    """What is wrong with the links of one Markdown file: 'line: target (why)' for each."""
    problems = []
    for line, kind, target in links(path):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{line}: {target} (no such file)")
        elif root.resolve() not in linked.parents and linked != root.resolve():
            problems.append(f"{line}: {target} (outside the repository)")
        elif anchor and kind == "link" and linked.suffix == ".md" and unquote(anchor) not in anchors(linked):
            problems.append(f"{line}: {target} (no heading with that anchor in {linked.name})")
    return problems


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_and_image_resolves(path):
    assert broken_links(path) == []


def test_the_checker_finds_broken_links(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "A.md").write_text("# A title\n\n## Exit codes, and more\n\n## Exit codes, and more\n\n"
                                        "## The `--x` option\n")
    (root / "pic.png").write_bytes(b"")
    (tmp_path / "elsewhere.md").write_text("outside the repository")
    page = root / "README.md"
    page.write_text("\n".join([
        "[fine](docs/A.md#a-title) [fine](docs/A.md#exit-codes-and-more-1) [fine](docs/A.md#the---x-option)",
        "![fine](pic.png) [web](https://x.org/y)",
        '<img src="pic.png" width="100"> [here](#top) `[code](nowhere.md)`',
        "```", "[in a block](nowhere.md)", "```",
        "# Top",
        "[gone](docs/B.md) ![gone](docs/pic.png) [bad anchor](docs/A.md#exit-codes) <img src=\"none.png\">",
        "[outside](../elsewhere.md)",
    ]))
    assert sorted(broken_links(page, root=root)) == sorted([
        "8: docs/B.md (no such file)", "8: docs/pic.png (no such file)",
        "8: docs/A.md#exit-codes (no heading with that anchor in A.md)", "8: none.png (no such file)",
        "9: ../elsewhere.md (outside the repository)"])


def test_slugs_follow_github():
    assert slug("Evaluation: the numbers in `metrics.json`") == "evaluation-the-numbers-in-metricsjson"
    assert slug("The hierarchical VAE (`--arch hierarchical`, 2026-12-01)") == \
        "the-hierarchical-vae---arch-hierarchical-2026-12-01"
    assert slug("Fashion-MNIST, defaults (`python vae_fashion_mnist.py`)") == \
        "fashion-mnist-defaults-python-vae_fashion_mnistpy"
    assert slug("Fréchet distance — v2") == "fréchet-distance--v2"


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines, at most {README_MAX_LINES}"
    images = [line for line, kind, _ in links(ROOT / "README.md") if kind == "image"]
    assert images and images[0] <= FIRST_IMAGE_WITHIN, f"README.md's first image is on line {images[:1]}"


@pytest.mark.parametrize("path", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_no_docs_file_is_longer_than_the_readme(path):
    if path.name == "BENCHMARKS.md":  # the measurements, newest first: allowed to grow
        return
    readme = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert len(path.read_text(encoding="utf-8").splitlines()) <= readme, path.name
