"""The shape a newcomer relies on: no function in `src/` over 80 lines,
a README that is a front door (at most 200 lines), and documentation whose links stay inside the repository
and point at files that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "latentvla"
MAX_LINES = 80
LIMITS: dict[tuple[str, str], int] = {}  # per-function exceptions (none today)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_no_function_in_src_is_longer_than_80_lines():
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for name, line, n in _functions(path):
            if n > LIMITS.get((rel, name), MAX_LINES):
                too_long.append(f"{rel}:{line} {name}: {n} lines")
    assert not too_long, "functions over the limit (split them into named steps):\n" + "\n".join(too_long)


def test_the_checker_counts_lines(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def a():\n" + "    x = 1\n" * 85 + "\n\ndef b():\n    return 1\n")
    assert dict((n, k) for n, _, k in _functions(f)) == {"a": 86, "b": 2}


def test_readme_is_a_front_door():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= 200, f"README.md has {n} lines; move detail into docs/ and link it"


def _markdown_files():
    def hidden(p: Path) -> bool:  # .git, .venv, .pytest_cache, ...: not the repository's documentation
        return any(part.startswith(".") or part.endswith(".egg-info") for part in p.relative_to(ROOT).parts)

    return [p for p in ROOT.rglob("*.md") if not hidden(p) and "outputs" not in p.relative_to(ROOT).parts[:1]]


def test_documentation_links_stay_inside_the_repository_and_resolve():
    bad = []
    for md in _markdown_files():
        for target in LINK.findall(md.read_text()):
            if re.match(r"^[a-z]+:", target):  # a URL or mailto: outside the repository
                bad.append(f"{md.relative_to(ROOT)}: {target} (a link outside the repository)")
                continue
            dest = (md.parent / target).resolve()
            if not dest.is_relative_to(ROOT):
                bad.append(f"{md.relative_to(ROOT)}: {target} (leaves the repository)")
            elif not dest.exists():
                bad.append(f"{md.relative_to(ROOT)}: {target} (no such file)")
    assert not bad, "\n".join(bad)


def test_nothing_refers_to_files_beside_the_repository():
    pattern = re.compile(r"\.\./shared|reference/[a-z-]+\.md|papers\.md|SPEC\.md")
    hits = []
    for path in [
        *SRC.rglob("*.py"),
        *(ROOT / "tests").rglob("*.py"),
        *(ROOT / "runs").glob("*"),
        *_markdown_files(),
    ]:
        if path.is_file() and path.name != "test_code_shape.py":
            for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if pattern.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not hits, "references to files a clone does not have:\n" + "\n".join(hits)
