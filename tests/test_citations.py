"""Every path the repository cites exists, and nothing cites material from outside the repository.

Scanned: the tracked (and new, not ignored) ``.py``, ``.yaml`` / ``.yml`` and ``.md`` files. Checked:

- a token that looks like a relative repository path (a top-level folder of this repository, then a
  file name with an extension, or a folder ending in ``/``) names a file or folder that exists;
  ``::test`` and ``#anchor`` suffixes are split off, and an anchor into a Markdown file must be one of
  its headings;
- a docs section cited by name, ``docs/<file>.md, "<heading>"`` (or single quotes), is a heading of
  that file;
- a relative Markdown link ``[text](target)`` resolves from the file that holds it;
- no file mentions the planning notes the project started from (their name is spelled out below only
  in pieces, so this file does not match itself).

Not checked (see :func:`is_checkable`): URLs and upstream references (``owner/repo@commit:path``, whose
path follows a colon), globs and placeholders (``*``, ``<name>``, ``{a,b}``, ``[...]``, ``$VAR``),
run outputs (``runs/``, ``results/runs/``, ``data/``, ``/tmp``) and the generated outputs listed in
:data:`GENERATED` (ignored by git, written by ``make``).
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCANNED_SUFFIXES = (".py", ".yaml", ".yml", ".md")
# The planning notes' file name, assembled so that this file is not a hit of its own check.
PLANNING_NOTES = "facts" + ".md"

# Generated outputs (each ignored by .gitignore; test_generated_outputs_are_ignored checks it): the
# files `make reproduce-table5`, `make reproduce-gains`, `make figures` and the leaderboard write.
GENERATED = frozenset(
    {
        "results/table5.md",
        "results/table5.csv",
        "results/leaderboard.csv",
        "results/gains_tiny.md",
        "results/gains_tiny.csv",
    }
)
GENERATED_DIRS = ("results/figures/",)
# Run outputs and local data: written by runs, never part of the repository.
RUN_OUTPUT_DIRS = ("runs/", "results/runs/", "data/", "output/")

PLACEHOLDER_CHARS = set("*?<>{}[]$%")
TRAILING = ".,;:!?)]}'\"`"


def _git(*args: str) -> list[str]:
    result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
    return [line for line in result.stdout.splitlines() if line]


@cache
def scanned_files() -> tuple[str, ...]:
    """Tracked files and new files git does not ignore, that exist, with a scanned suffix."""
    try:
        names = _git("ls-files", "--cached", "--others", "--exclude-standard")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the citation check needs `git ls-files`")
    return tuple(sorted({n for n in names if n.endswith(SCANNED_SUFFIXES) and (REPO / n).is_file()}))


@cache
def top_level_folders() -> tuple[str, ...]:
    """The repository's top-level folders (hidden ones left out), plus docs/."""
    folders = {name.split("/", 1)[0] for name in scanned_files() if "/" in name}
    folders |= {name.split("/", 1)[0] for name in _git("ls-files") if "/" in name}
    return tuple(sorted((folders | {"docs"}) - {f for f in folders if f.startswith(".")}))


@cache
def path_pattern() -> re.Pattern[str]:
    folders = "|".join(re.escape(f) for f in top_level_folders())
    # Not preceded by a character that would make the token part of a longer path, a URL, a Python
    # attribute or an upstream reference (owner/repo:path, owner/repo@commit:path).
    return re.compile(rf"(?<![\w./:@~\-])(?:{folders})/[^\s`'\"(),;|]*")


# A section name may wrap onto the next line (of a comment: its '#' is dropped).
_WRAP = r"\n[ \t]*#?[ \t]*"
SECTION_CITATION = re.compile(
    rf"(docs/[\w./-]+\.md),[ \t]*(?:{_WRAP})?(?P<quote>[\"'])"
    rf"(?P<section>[^\"'\n]+(?:{_WRAP}[^\"'\n]+)?)(?P=quote)"
)
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces -> hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@cache
def headings(path: str) -> frozenset[str]:
    text = (REPO / path).read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)  # no '#' lines of code
    return frozenset(match.group(1).strip() for match in HEADING.finditer(text))


def clean(token: str) -> str:
    while token and token[-1] in TRAILING:
        token = token[:-1]
    return token


def is_checkable(path: str) -> bool:
    """False for globs, placeholders, run outputs and generated outputs."""
    if any(c in PLACEHOLDER_CHARS for c in path):
        return False
    if path.startswith(RUN_OUTPUT_DIRS + GENERATED_DIRS) or path in GENERATED:
        return False
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return path.endswith("/") or ("." in name.strip(".") and not name.endswith("."))


def check_anchor(target: str, anchor: str) -> str | None:
    if not anchor or not target.endswith(".md"):
        return None
    if anchor not in {github_slug(h) for h in headings(target)}:
        return f"{target}#{anchor}: no such heading"
    return None


def broken_citations(name: str, text: str) -> list[str]:
    problems = []
    for match in path_pattern().finditer(text):
        token = clean(match.group(0))
        token, _, _ = token.partition("::")
        token, _, anchor = token.partition("#")
        token = clean(token)
        if not is_checkable(token):
            continue
        line = text.count("\n", 0, match.start()) + 1
        target = REPO / token
        if not (target.is_dir() if token.endswith("/") else target.is_file()):
            problems.append(f"{name}:{line}: {token} does not exist")
        elif problem := check_anchor(token, anchor):
            problems.append(f"{name}:{line}: {problem}")
    for match in SECTION_CITATION.finditer(text):
        doc, section = match.group(1), re.sub(_WRAP, " ", match.group("section")).strip()
        line = text.count("\n", 0, match.start()) + 1
        if (REPO / doc).is_file() and section not in headings(doc):
            problems.append(f'{name}:{line}: {doc} has no section "{section}"')
    if name.endswith(".md"):
        for match in MARKDOWN_LINK.finditer(text):
            link = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", link) or link.startswith(("#", "/")):
                continue
            target, _, anchor = link.partition("#")
            resolved = (REPO / name).parent / target
            line = text.count("\n", 0, match.start()) + 1
            if not resolved.exists():
                problems.append(f"{name}:{line}: link {link} does not resolve")
            elif target.endswith(".md"):
                relative = resolved.resolve().relative_to(REPO).as_posix()
                if problem := check_anchor(relative, anchor):
                    problems.append(f"{name}:{line}: {problem}")
    return problems


THIS_FILE = Path(__file__).resolve().relative_to(REPO).as_posix()


def test_every_cited_repository_path_exists():
    problems = []
    for name in scanned_files():
        if name != THIS_FILE:  # its examples below cite missing paths on purpose
            problems += broken_citations(name, (REPO / name).read_text(encoding="utf-8"))
    assert not problems, "citations of paths that do not exist:\n" + "\n".join(problems)


def test_nothing_cites_the_planning_notes():
    hits = [
        f"{name}:{number}: {line.strip()}"
        for name in scanned_files()
        if name != THIS_FILE
        for number, line in enumerate((REPO / name).read_text(encoding="utf-8").splitlines(), 1)
        if PLANNING_NOTES in line
    ]
    assert not hits, (
        f"{PLANNING_NOTES} is planning material outside the repository; cite docs/ or the primary "
        "source (paper section, upstream owner/repo@commit:path) instead:\n" + "\n".join(hits)
    )


def test_generated_outputs_are_ignored():
    """The whitelisted outputs are really outputs: git ignores them, so none can hide a lost file."""
    ignored = set(_git("check-ignore", "--no-index", *GENERATED, *GENERATED_DIRS, *RUN_OUTPUT_DIRS))
    assert ignored == set(GENERATED) | set(GENERATED_DIRS) | set(RUN_OUTPUT_DIRS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see pretrain/no_such_module.py for it", ["x.md:1: pretrain/no_such_module.py does not exist"]),
        ("(pretrain/optim.py), `evaluate/configs/sslight.yaml`.", []),
        ("tests/test_optim.py::test_timm_lars and pretrain/configs/tiny/", []),
        ("saic-fi/SSLight@0b94aeb:detection/configs/Base-MobileNet-FPN.yaml", []),
        ("https://example.org/pretrain/missing.py", []),
        ("evaluate/configs/*.yaml, results/runs/<run_id>.csv, runs/x/last.pth, results/table5.md", []),
        ("benchmarks/results/summary_<device>.md and data/fmnist_det/x.json", []),
        ("pretrain/missing/", ["x.md:1: pretrain/missing/ does not exist"]),
        ("README.md#no-such-heading", []),  # a root file: not a folder citation
    ],
)
def test_the_scanner_on_examples(text, expected):
    assert broken_citations("x.md", text) == expected


def test_the_scanner_checks_docs_sections_and_links():
    doc, heading = "docs/recipes.md", "Monitoring during training"
    assert heading in headings(doc)
    assert broken_citations("x.py", f'# ({doc}, "{heading}")') == []
    assert broken_citations("x.py", f"# ({doc},\n# '{heading}')") == []
    assert broken_citations("x.py", f'# ({doc}, "Monitoring\n#   during training")') == []
    assert broken_citations("x.py", f'# ({doc}, "Monitoring during\n    training")') == []
    assert broken_citations("x.py", f'# ({doc}, "No such\n# section")') == [
        f'x.py:1: {doc} has no section "No such section"'
    ]
    assert broken_citations("x.py", f"{doc}#monitoring-during-training") == []
    assert broken_citations("x.py", f"{doc}#no-such-anchor") == [
        f"x.py:1: {doc}#no-such-anchor: no such heading"
    ]
    assert broken_citations("docs/x.md", "[a](missing.md)") == [
        "docs/x.md:1: link missing.md does not resolve"
    ]
    assert broken_citations("docs/x.md", "[a](recipes.md#loss-re-balancing)") == []
