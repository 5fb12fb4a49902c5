"""The texts a newcomer reads: README short and in order, every relative link resolving, every
module in README's layout, and words about the project and its users, not how it was built."""
import ast
import io
import re
import tokenize

import pytest

from rdprune.util import REPO

README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
LIB = REPO / "lib" / "rdprune"
# the history of how the project was built, or the machine it was built on, is not documentation
DIARY = [r"\bsessions?\b", r"\bthis machine\b", r"\bwe had no gpu\b", r"\bno gpu in our\b",
         r"\bon these 2 cores\b", r"\b(?:s|minutes|hours|timed) here\b"]


def test_readme_reads_in_five_minutes():
    assert len(README.read_bytes()) <= 12 * 1024
    heads = re.findall(r"^## (.+)$", README.read_text(), re.M)
    order = ["Install", "Quick start", "The notebooks", "API tour", "Results", "Layout", "Tests"]
    assert [h for h in heads if h in order] == order


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _prose(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            bad.append(target)
        elif anchor and file.suffix == ".md":
            heads = re.findall(r"^#+ (.+)$", _prose(file.read_text()), re.M)
            if anchor not in {_slug(h) for h in heads}:
                bad.append(target)
    assert not bad, f"{page.name}: links that do not resolve: {bad}"


def _comments_and_docstrings(path):
    source = path.read_text()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield getattr(node, "lineno", 1), doc


def test_no_diary_in_readme_docs_or_docstrings():
    hits = []
    texts = [(p.relative_to(REPO), 0, p.read_text()) for p in PAGES]
    texts += [(p.relative_to(REPO), line, text) for p in sorted(LIB.rglob("*.py"))
              for line, text in _comments_and_docstrings(p)]
    for where, line, text in texts:
        for pattern in DIARY:
            for m in re.finditer(pattern, text, re.I):
                hits.append(f"{where}:{line}: {m.group(0)!r}")
    assert not hits, "\n".join(hits)


def _layout() -> str:
    text = README.read_text()
    section = text[text.index("## Layout"):]
    return re.search(r"```\n(.*?)```", section, re.S).group(1)


def test_readme_layout_lists_every_module():
    layout = _layout()
    described = dict(re.findall(r"^\s+([\w/]+\.py)\s+(.+)$", layout, re.M))
    missing = []
    for path in sorted(LIB.rglob("*.py")):
        rel = path.relative_to(LIB)
        if path.name == "__init__.py":
            if rel.parent.parts and f"{rel.parent.name}/" not in layout:
                missing.append(str(rel.parent) + "/")
        elif path.name not in layout:
            missing.append(str(rel))
        elif path.name in described:  # the one-line description and the module's docstring agree
            doc = (ast.get_docstring(ast.parse(path.read_text())) or "").split("\n\n")[0].lower()
            words = {w for w in re.findall(r"[a-z_]{4,}", described[path.name].lower())}
            assert words & set(re.findall(r"[a-z_]{4,}", doc)), \
                f"README's line for {rel} shares no word with its docstring: {described[path.name]!r}"
    assert not missing, f"modules missing from README's layout: {missing}"
