"""Issue 28's signs of one stage kit, checked on the tree: small files and functions in the stage
folders, no import circles, no imports between sibling stages, and one home for each kit piece.

Counted on the AST of every ``.py`` file: a file's length is its number of lines; a function's is
``end_lineno - lineno + 1`` without its docstring. Imports include those inside functions and under
``TYPE_CHECKING`` (a circle dodged by a lazy import is still a circle). Tests are not counted.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STAGES = ("pretrain", "evaluate", "semisup", "detection", "results")
SIBLINGS = ("pretrain", "evaluate", "semisup", "detection")
INSTALLED = {"lowssl": "lowssl", **{f"lowssl.{s}": s for s in (*STAGES, "benchmarks")}}
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    """Every module lowssl installs, by its import name (lowssl.pretrain.train -> pretrain/train.py)."""
    modules = {}
    for package, folder in INSTALLED.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if package == "lowssl" and parts and f"lowssl.{parts[0]}" in INSTALLED:
                continue
            name = ".".join((package, *parts)).removesuffix(".__init__")
            modules[name] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        # a module importing its own package's __init__ is how packages work, not a circle
        graph[name] = {t for t in _imports(path, modules) if t != name and not name.startswith(t + ".")}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def _function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    docstring = (
        body[0].end_lineno - body[0].lineno + 1
        if body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
        else 0
    )
    return node.end_lineno - node.lineno + 1 - docstring


def test_no_stage_file_or_function_is_too_long():
    too_long = []
    for stage in STAGES:
        for path in sorted((REPO / stage).rglob("*.py")):
            text = path.read_text()
            lines = len(text.splitlines())
            if lines > MAX_FILE_LINES:
                too_long.append(f"{path.relative_to(REPO)}: {lines} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    if _function_lines(node) > MAX_FUNCTION_LINES:
                        too_long.append(
                            f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {_function_lines(node)}"
                        )
    assert not too_long, (
        f"over {MAX_FILE_LINES} lines a file / {MAX_FUNCTION_LINES} a function:\n" + "\n".join(too_long)
    )


def test_no_import_circles():
    assert _circles(_graph()) == []


def test_no_imports_between_sibling_stages():
    crossing = [
        f"{source} -> {target}"
        for source, targets in _graph().items()
        for target in targets
        for stage in SIBLINGS
        if source.startswith(f"lowssl.{stage}")
        and any(target.startswith(f"lowssl.{other}") for other in SIBLINGS if other != stage)
    ]
    assert not crossing, "\n".join(crossing)


def test_the_circle_finder_finds_a_circle():
    """The check above can fail: a two-module circle and a three-module one are found."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(_circles(graph)) == [["a", "b"], ["c", "d", "e"]]


@pytest.mark.parametrize(
    ("pattern", "home"),
    [
        ("class ResumeError", "lowssl/stopping.py"),
        ("class NonFiniteLossError", "lowssl/stopping.py"),
        ("def resume_path", "lowssl/stopping.py"),
        ("class StageParser", "lowssl/cli.py"),
        ("(argparse.ArgumentParser)", "lowssl/cli.py"),
        ("def torchrun(", "results/commands.py"),
        ("LR_REFERENCE_BATCH =", "lowssl/protocols.py"),
        ("class EpochSampler", "lowssl/sampler.py"),
        ("Record(", "lowssl/records.py"),
        ("class Registry", "lowssl/registry.py"),
    ],
)
def test_each_kit_piece_has_one_home(pattern, home):
    found = subprocess.run(
        ["git", "grep", "-l", "-F", pattern, "--", "*.py", ":!tests"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert found == [home], f"{pattern!r} in {found}"
