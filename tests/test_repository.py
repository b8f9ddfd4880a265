"""The repository explains itself: the facts the code follows are in docs/DESIGN.md, so no file under
code/, tests/ or bench/ may send a reader to a document outside the repository or to an issue-tracker
number, and every section of docs/DESIGN.md that a file cites must exist. The tests mirror the code (the
rule is in tests/conftest.py), and the benchmarks stand on the package alone, not on the tests."""
from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "DESIGN.md"
SCANNED_FOLDERS = ("code", "tests", "bench")
TEXT_SUFFIXES = {".py", ".pyi", ".yaml", ".yml", ".sh", ".txt", ".md", ".toml", ".cfg", ".ini", ".json"}

# The patterns are assembled from pieces so that this file, which is scanned too, does not match itself.
_FORMER_DOC = "SP" + "EC"
_TRACKER = "iss" + "ue"
_PORT_README = "earlier-port-" + "README"
_SHARED = "../" + "shared"
FORBIDDEN = {
    "the former design document outside the repository (write the fact into docs/DESIGN.md and cite it)":
        re.compile(rf"\b{_FORMER_DOC}\b|(?i:\b{_FORMER_DOC}\.md)"),
    "a document outside the repository (write the fact into docs/DESIGN.md and cite it)":
        re.compile(rf"(?i){_PORT_README}|{re.escape(_SHARED)}/[\w./-]*\.md\b|/work/{_SHARED[3:]}\b"),
    "an issue-tracker number (say what the code does and why instead)":
        re.compile(rf"(?i)\b{_TRACKER}s?\s*#?\s*\d+|\b(?:pull request|PR)\s*#\s*\d+|(?<![\w#&/\\'\"])#\d+\b"),
}

# "docs/DESIGN.md §4.2", "DESIGN.md, §4 and §5.1", across a line break and a comment sign too.
_CITATION = re.compile(r"DESIGN\.md(?P<tail>(?:[\s#,;:(\"'`\-–]*(?:and\s+|or\s+)?§\s*\d+(?:\.\d+)*)+)")
_SECTION_REF = re.compile(r"§\s*(\d+(?:\.\d+)*)")
_HEADING = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s+\S", re.MULTILINE)


def scanned_files() -> list[Path]:
    """Every text file under code/, tests/ and bench/ (caches and hidden entries left out)."""
    found = []
    for folder in SCANNED_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            relative = path.relative_to(ROOT).parts
            if any(part.startswith(".") or part == "__pycache__" for part in relative):
                continue
            if path.is_file() and path.suffix in TEXT_SUFFIXES:
                found.append(path)
    return found


def prose_lines(text: str, python: bool = True) -> list[tuple[int, str]]:
    """(line number, text) of what a reader reads: in Python source its comments, docstrings and string
    literals (messages), not its names (a constant named after a weights file's spec is no citation); in any other
    file every line."""
    if python:
        try:
            lines = []
            for token in tokenize.generate_tokens(io.StringIO(text).readline):
                if token.type in (tokenize.COMMENT, tokenize.STRING) or token.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
                    first = token.start[0]
                    lines += [(first + k, part) for k, part in enumerate(token.string.splitlines())]
            return lines
        except (tokenize.TokenError, SyntaxError, IndentationError):
            pass  # not valid Python: read it all
    return list(enumerate(text.splitlines(), 1))


def forbidden_citations(text: str, python: bool = True) -> list[tuple[int, str, str]]:
    """(line number, what is wrong, the line) for every citation of something a reader cannot open."""
    hits = []
    for number, line in prose_lines(text, python):
        for why, pattern in FORBIDDEN.items():
            if pattern.search(line):
                hits.append((number, why, line.strip()))
    return hits


def cited_sections(text: str) -> list[str]:
    """The section numbers cited as `DESIGN.md §N[.M]`, in order."""
    return [ref for match in _CITATION.finditer(text) for ref in _SECTION_REF.findall(match["tail"])]


def design_sections(text: str) -> list[str]:
    """The numbers of docs/DESIGN.md's numbered headings ("## 4. ...", "### 4.2 ..."), in order."""
    return _HEADING.findall(text)


def test_no_file_cites_a_document_outside_the_repository_or_an_issue_number():
    problems = []
    for path in scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, why, line in forbidden_citations(text, python=path.suffix in (".py", ".pyi")):
            problems.append(f"{path.relative_to(ROOT)}:{number}: {why}: {line[:120]}")
    assert not problems, "\n".join(problems)


def test_every_cited_design_section_exists():
    sections = set(design_sections(DESIGN.read_text(encoding="utf-8")))
    sources = [*scanned_files(), ROOT / "README.md"]
    missing = []
    for path in sources:
        for ref in cited_sections(path.read_text(encoding="utf-8", errors="replace")):
            if ref not in sections:
                missing.append(f"{path.relative_to(ROOT)} cites docs/DESIGN.md §{ref}, which does not exist")
    # Inside the design notes a bare "§N" is a cross-reference to their own sections.
    for ref in _SECTION_REF.findall(DESIGN.read_text(encoding="utf-8")):
        if ref not in sections:
            missing.append(f"docs/DESIGN.md refers to its own §{ref}, which does not exist")
    assert not missing, "\n".join(missing)


def test_design_sections_are_numbered_in_order():
    """1, 1.1, 1.2, 2, 2.1, ...: each heading is the next number at its level, so that a citation keeps
    meaning what it meant when it was written only if sections are appended, never renumbered silently."""
    numbers = design_sections(DESIGN.read_text(encoding="utf-8"))
    assert numbers and numbers[0] == "1"
    for previous, current in zip(numbers, numbers[1:]):
        prev, cur = [int(v) for v in previous.split(".")], [int(v) for v in current.split(".")]
        deeper = cur == prev + [1]
        following = len(cur) <= len(prev) and cur[:-1] == prev[:len(cur) - 1] and cur[-1] == prev[len(cur) - 1] + 1
        assert deeper or following, f"docs/DESIGN.md: section {current} follows {previous}"


def test_the_design_notes_are_cited_by_the_code():
    """The notes are where docstrings send a reader; a file nobody cites would drift from the code."""
    citing = [path for path in scanned_files() if cited_sections(path.read_text(encoding="utf-8", errors="replace"))
              and path.parts[-2] != "tests"]
    assert citing, "no file under code/ or bench/ cites a section of docs/DESIGN.md"


# ------------------------------------------------------------------ the checks above can fail

@pytest.mark.parametrize("line", [
    f"# as {_FORMER_DOC}.md says",
    f"# (see {_FORMER_DOC} §4)",
    f'raise ValueError("fixed in {_TRACKER} 12")',
    f"# {_TRACKER.capitalize()} " + "#11: hostile inputs",
    "# the crop, fixed in " + "#12",
    "# PR " + "#7 added this",
    f"# see {_SHARED}/notes.md",
    f"# its README is in reference/{_PORT_README}.md",
])
def test_forbidden_citations_are_found(line):
    assert forbidden_citations(line), line
    assert forbidden_citations(line, python=False), line


@pytest.mark.parametrize("line", [
    'SPEC_112x96 = {"model_name": "sphereface4"}',
    "SPECIAL_COSINES = {1: [1.0]}",
    "spec = payload['spec']  # the weights file's spec",
    'colour = "#00ff00"',
    "# 1-based pixels",
    "url = 'http://vis-www.cs.umass.edu/lfw/#views'",
    "docs/DESIGN.md §4.2",
])
def test_ordinary_text_is_not_flagged(line):
    assert not forbidden_citations(line), line


def test_names_are_not_prose_but_comments_docstrings_and_messages_are():
    source = (f'{_FORMER_DOC} = {{"model_name": "x"}}\n'
              f'def f():\n    """Docstring.\n\n    As {_FORMER_DOC}.md says."""\n'
              f'    return {_FORMER_DOC}  # {_TRACKER} 3\n'
              f'raise ValueError(f"see {_TRACKER} 12 for {{n}}")\n')
    assert [number for number, _, _ in forbidden_citations(source)] == [5, 6, 7]


def test_citations_are_parsed_and_a_missing_section_is_reported():
    text = ('"""Eq. 7 (docs/DESIGN.md §4.2, §4.3 and §9).\n'
            "    # the template: docs/DESIGN.md\n    # §6.3\n"
            'msg = "see docs/DESIGN.md §' + '99"\n"""')
    assert cited_sections(text) == ["4.2", "4.3", "9", "6.3", "99"]
    sections = set(design_sections("## 4. A\n### 4.2 B\n### 4.3 C\n## 6. D\n### 6.3 E\n## 9. F\n"))
    assert [ref for ref in cited_sections(text) if ref not in sections] == ["99"]


# ------------------------------------------------------------------ the tests mirror the code

# Scripts whose only end-to-end tests are test_cli.py's checks of every script: demo.py runs every other
# script on the toy set (minutes), make_toy_data.py is toydata.generate (test_toydata.py) behind options.
SCRIPTS_TESTED_ONLY_BY_TEST_CLI = {"demo", "make_toy_data"}


def expected_test_file(module: Path) -> str:
    """The test file of code/uniformface/<...>.py by the rule in tests/conftest.py."""
    parts = module.relative_to(ROOT / "code" / "uniformface").with_suffix("").parts
    if parts == ("__init__",):
        return "test_package.py"
    if parts[0] == "data":
        return {"recordio": "test_recordio.py", "packed": "test_packed.py"}.get(parts[-1], "test_datasets.py")
    if parts[0] == "commands" and parts[-1] == "__init__":
        return "test_cli.py"
    return f"test_{parts[-1]}.py"


def test_every_module_and_script_has_its_test_file():
    missing = []
    for module in sorted((ROOT / "code" / "uniformface").rglob("*.py")):
        if "__pycache__" in module.parts or (module.parent.name == "commands"
                                             and module.stem in SCRIPTS_TESTED_ONLY_BY_TEST_CLI):
            continue
        if module.name == "__init__.py" and not module.read_text().strip():  # a subpackage's empty marker
            continue
        if not (ROOT / "tests" / expected_test_file(module)).is_file():
            missing.append(f"{module.relative_to(ROOT)}: tests/{expected_test_file(module)}")
    assert not missing, missing
    assert expected_test_file(ROOT / "code" / "uniformface" / "commands" / "test.py") == "test_test.py"
    assert expected_test_file(ROOT / "code" / "uniformface" / "data" / "trainset.py") == "test_datasets.py"


def test_benchmarks_import_nothing_from_the_tests_and_edit_no_path():
    """bench/*.py run as `PYTHONPATH=code python bench/x.py` (or with the package installed): what they share
    with the tests is in bench/common.py, which the tests import, not the other way round."""
    test_modules = {path.stem for path in (ROOT / "tests").glob("*.py")}
    for path in sorted((ROOT / "bench").glob("*.py")):
        text = path.read_text()
        assert "sys.path" not in text, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            assert not {name.split(".")[0] for name in names} & test_modules, (path.name, names)
