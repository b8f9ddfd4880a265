"""The repository explains itself: the facts the code follows are in docs/DESIGN.md, so no file under
code/, tests/ or bench/ may send a reader to a document outside the repository or to an issue-tracker
number, and every section of docs/DESIGN.md that a file cites must exist. The tests mirror the code (the
rule is in tests/conftest.py), and the benchmarks stand on the package alone, not on the tests. The README
and docs/*.md name only what exists: files and headings they link to, repository paths, make targets, tests."""
from __future__ import annotations

import ast
import functools
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
    sources = [*scanned_files(), *(document for document in DOCUMENTS if document != DESIGN)]  # README, docs/
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


# ------------------------------------------------------------------ the documents point at things that exist

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target), with an optional "title"
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:
# A repository path: it starts a word (so ".../train/code/x.prototxt" of an outside repository is no match) and
# ends on a name character; a path followed by "<" or "{" is a pattern ("code/<script>.py"), not a path.
_REPO_PATH = re.compile(r"(?<![\w./-])((?:code|bench|tests|docs)/[\w./-]*[\w/])(?![\w<{*])")
_MAKE = re.compile(r"(?:^|[;&|(]\s*)make\s+([A-Za-z][\w.-]*)")  # at the start of a command: not the verb
_TEST_NAME = re.compile(r"(?:(?<![\w/])(?:tests/)?(test_\w+\.py))?::(test_\w+)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_MAKE_RULE = re.compile(r"^([A-Za-z0-9_.-]+(?:[ \t]+[A-Za-z0-9_.-]+)*)[ \t]*::?(?!=)", re.MULTILINE)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text without Markdown code and link marks, lower case,
    every character but letters, digits, '_', '-' and spaces dropped, spaces made '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays, its target goes
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def markdown_blocks(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(line number, line) of the prose and of the fenced code blocks, apart."""
    prose, code, fenced = [], [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        (code if fenced else prose).append((number, line))
    return prose, code


def headings(text: str) -> list[str]:
    """The text of a Markdown file's headings (outside code blocks), in order, as written."""
    return [match[1] for _, line in markdown_blocks(text)[0]
            if (match := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line))]


def heading_anchors(text: str) -> set[str]:
    """Every anchor of a Markdown file's headings, a repeated one numbered as GitHub numbers it: "x", "x-1",
    "x-2"."""
    anchors: set[str] = set()
    for heading in headings(text):
        slug = base = github_slug(heading)
        count = 0
        while slug in anchors:
            count += 1
            slug = f"{base}-{count}"
        anchors.add(slug)
    return anchors


def make_targets(makefile: Path) -> set[str]:
    """The targets the Makefile has rules for (recipe lines, which start with a tab, excluded)."""
    targets = set()
    for match in _MAKE_RULE.finditer(makefile.read_text()):
        targets.update(name for name in match[1].split() if not name.startswith("."))
    return targets


def inline_code(line: str) -> list[str]:
    return re.findall(r"`([^`]+)`", line)


def broken_references(text: str, where: Path, root: Path = ROOT, targets: set[str] | None = None) -> list[str]:
    """What a Markdown file at `where` names that is not there: a relative link to a missing file or to a
    heading its target does not have, a repository path (code/, bench/, tests/, docs/) that does not exist,
    a `make` target without a rule, a `test_x.py::test_y` that the test file does not define."""
    targets = make_targets(root / "Makefile") if targets is None else targets
    prose, code = markdown_blocks(text)
    problems = []
    for number, line in prose:
        for target in _LINK.findall(line):
            if _EXTERNAL.match(target):
                continue
            path_part, _, anchor = target.partition("#")
            linked = (where.parent / path_part).resolve() if path_part else where
            if not linked.exists():
                problems.append(f"{where.name}:{number}: link to {target}: no file {path_part}")
            elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
                problems.append(f"{where.name}:{number}: link to {target}: {linked.name} has no heading #{anchor}")
    commands = [(n, part) for n, line in prose for part in inline_code(line)] + code
    for number, line in prose + code:
        for path in _REPO_PATH.findall(line):
            if not (root / path).exists():
                problems.append(f"{where.name}:{number}: {path} does not exist")
        test_file = None
        for named_file, test in _TEST_NAME.findall(line):
            test_file = named_file or test_file  # "`a.py::x`, `::y`": y is in a.py too
            source = root / "tests" / test_file if test_file else None
            if source is None or not source.is_file() or not re.search(rf"^\s*(?:async\s+)?def {test}\(",
                                                                       source.read_text(), re.MULTILINE):
                problems.append(f"{where.name}:{number}: {test_file}::{test} is not a test of tests/{test_file}")
    for number, command in commands:
        for target in _MAKE.findall(command):
            if target not in targets:
                problems.append(f"{where.name}:{number}: `make {target}`: the Makefile has no rule {target}")
    return problems


def test_every_link_path_make_target_and_test_named_in_the_documents_exists():
    problems = [problem for document in DOCUMENTS
                for problem in broken_references(document.read_text(encoding="utf-8"), document)]
    assert not problems, "\n".join(problems)


def test_the_readme_stays_a_short_guide_that_links_every_document():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    linked = {target.partition("#")[0] for target in _LINK.findall(readme)}
    assert {f"docs/{document.name}" for document in DOCUMENTS[1:]} <= linked


def test_broken_links_paths_make_targets_and_test_names_are_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text("")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("def test_kept():\n    pass\n")
    (tmp_path / "docs" / "B.md").write_text("# B\n\n## 4. Two words (`x.py`)\n\n```\n# not a heading\n```\n")
    (tmp_path / "Makefile").write_text(".PHONY: demo test\n\ndemo test: venv\n\tpython code/demo.py\n")
    where = tmp_path / "docs" / "A.md"
    good = ("See [B](B.md#4-two-words-xpy), [the top](B.md), [lfw](http://example.org/x#y), `make demo`,\n"
            "`code/train.py`, `tests/test_a.py::test_kept`, the code/<script>.py pattern; to make sense.\n"
            "```\nmake test   # and python code/train.py\n```\n")
    assert broken_references(good, where, tmp_path) == []
    bad = ("[gone](C.md) [no heading](B.md#not-a-heading) [no anchor](B.md#two-words) `make test-fast`\n"
           "`code/trainer.py` `test_a.py::test_kept`, `::test_gone`\n"
           "```\ncd x && make bench\n```\n")
    problems = broken_references(bad, where, tmp_path)
    assert [problem.split(": ", 1)[1] for problem in problems] == [
        "link to C.md: no file C.md",
        "link to B.md#not-a-heading: B.md has no heading #not-a-heading",
        "link to B.md#two-words: B.md has no heading #two-words",
        "code/trainer.py does not exist",
        "test_a.py::test_gone is not a test of tests/test_a.py",
        "`make test-fast`: the Makefile has no rule test-fast",
        "`make bench`: the Makefile has no rule bench",
    ], problems


@pytest.mark.parametrize("heading, slug", [
    ("8. File formats", "8-file-formats"),
    ("On a GPU: `bench/gpu_check.sh`", "on-a-gpu-benchgpu_checksh"),
    ("Reproducing the paper: CASIA-WebFace → LFW", "reproducing-the-paper-casia-webface--lfw"),
    ("4. The uniform loss (`losses.py`, `centers.py`)", "4-the-uniform-loss-lossespy-centerspy"),
    ("The uniform loss's reading, measured", "the-uniform-losss-reading-measured"),
    ("See [the notes](DESIGN.md)", "see-the-notes"),
])
def test_headings_get_githubs_anchors(heading, slug):
    assert github_slug(heading) == slug
    assert heading_anchors(f"# {heading}\n\n## {heading}\n") == {slug, f"{slug}-1"}


def test_the_readmes_config_keys_exist_with_the_defaults_it_states():
    """Each row of the README's key table names keys of code/config.yaml and their values there, in order."""
    import yaml

    from uniformface.base.config import get_key, load_config

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The config keys you will change", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| `")]
    assert len(rows) >= 8, section
    config = load_config(ROOT / "code" / "config.yaml", [])
    for keys_cell, _paper, defaults_cell, _meaning in rows:
        keys = re.findall(r"`([\w.]+)`", keys_cell)
        defaults = yaml.safe_load("[" + defaults_cell.replace("`", "") + "]")
        assert len(keys) == len(defaults), (keys_cell, defaults_cell)
        for key, stated in zip(keys, defaults):
            assert get_key(config, key) == stated, (key, get_key(config, key), stated)


# ------------------------------------------------------------------ a section cited by name or number is there

# `README, "Tests"`, `README's "Code layout"`, `docs/CLI.md, "More commands"`, `UNIFORM_LOSS.md's "In short"`
_CITED_HEADING = re.compile(r"\b(README(?:\.md)?|(?:docs/)?[A-Z][A-Z_]*\.md)(?:'s)?,? \"([^\"]+)\"")
# `docs/DESIGN.md §4.6`, `DESIGN §2.3, §6.3`: each number after the document's name
_CITED_SECTIONS = re.compile(r"\bDESIGN(?:\.md)?((?:,? ?§ ?\d+(?:\.\d+)*)+)")


@functools.cache
def document_headings(path: Path) -> tuple[str, ...]:
    """A Markdown file's headings without code marks (each document read once, however often cited)."""
    return tuple(re.sub(r"[`*]", "", heading).strip() for heading in headings(path.read_text(encoding="utf-8")))


def missing_sections(text: str, where: str) -> list[str]:
    """Each `DOC, "Heading"` whose document has no heading starting with that text, and each `DESIGN §N.M`
    that DESIGN.md has no section of."""
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        for document, heading in _CITED_HEADING.findall(line):
            path = ROOT / "README.md" if document.startswith("README") else ROOT / "docs" / Path(document).name
            if not path.is_file():
                problems.append(f"{where}:{number}: {document} does not exist")
            elif not any(re.sub(r"^\d+\.\s+", "", h).lower().startswith(heading.lower())  # "2. Train..."
                         for h in document_headings(path)):
                problems.append(f"{where}:{number}: {path.name} has no heading {heading!r}")
        for sections in _CITED_SECTIONS.findall(line):
            numbered = {h.split()[0].rstrip(".") for h in document_headings(DESIGN) if h[:1].isdigit()}
            problems += [f"{where}:{number}: DESIGN.md has no §{n}" for n in re.findall(r"\d+(?:\.\d+)*", sections)
                         if n not in numbered]
    return problems


def test_a_section_cited_by_its_heading_or_number_exists():
    sources = [*scanned_files(), *DOCUMENTS, ROOT / "Makefile", ROOT / "Dockerfile"]
    problems = [p for path in sources for p in missing_sections(path.read_text(encoding="utf-8"),
                                                                  str(path.relative_to(ROOT)))]
    assert not problems, "\n".join(problems)


def test_the_section_check_finds_a_renamed_heading_and_a_missing_number():
    readme, design = "README", "DESIGN"  # a citation written out here would be checked as one
    text = f'{readme}, "Tests" and {readme}\'s "Real workflow"; docs/CLI.md, "More commands"; {design} §4.6, §4.99'
    assert missing_sections(text, "x") == ["x:1: README.md has no heading 'Real workflow'",
                                           "x:1: DESIGN.md has no §4.99"]
