"""Imports run one way: the package's layers (its docstring's table) and no cycle between modules;
only the commands and the progress display print (the library logs); and no module of the
package, the commands or the bench scripts is over 450 lines, no function over 80.

Every import of every module is read with `ast`, function-local and `TYPE_CHECKING` ones too, and
the names a package's `_lazy.exports` maps to modules. An import names the module it reaches (a
package's own `__init__` holds lazy names only, so the parent packages Python runs on the way do
not count).
"""

from __future__ import annotations

import ast
import pathlib
import re
import shutil

from conftest import REPO

PACKAGE = "keras_resnet"
# The modules that own what the user reads: the commands, the progress display, and the one line a
# command ends with on a signal. The rest of the package logs (`runtime.show_logs` shows it).
PRINTING = ("predict", "reproduce", "__main__", "training.progress", "console", "interrupts")
MODULE_LINES, FUNCTION_LINES = 450, 80  # a function counts from its `def` to its last line


def layer_table(root: pathlib.Path) -> list[tuple[str, list[str]]]:
    """The rows of the layer table in `root/__init__.py`'s docstring, bottom first: (layer, full
    names of its modules and packages)."""
    doc = ast.get_docstring(ast.parse((root / "__init__.py").read_text()))
    rows = re.findall(r"^\| (\w+) \| ([\w., ]+) \|$", doc, re.MULTILINE)[1:]  # after the header
    assert len(rows) > 5, "the layer table is missing from the package docstring"
    full = {"__init__": PACKAGE}
    return [(layer, [full.get(n, f"{PACKAGE}.{n}") for n in names.split(", ")]) for layer, names in rows]


def module_names(root: pathlib.Path) -> dict[str, pathlib.Path]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = (PACKAGE, *path.relative_to(root).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str, attribute: str = "") -> None:
        if f"{target}.{attribute}" in modules:
            found.add(f"{target}.{attribute}")
        elif target in modules:
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base])
            for alias in node.names:
                add(base.rstrip("."), alias.name)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "exports" and node.args[1:]:
            for value in getattr(node.args[1], "values", []):
                target = value.value
                add(package + target if target.startswith(".") else target)
    found.discard(name)
    return found


def layer_of(name: str, table: list[tuple[str, list[str]]]) -> int:
    """The row of the most specific name in `table` that is `name` or a package holding it."""
    matches = [
        (len(entry), row)
        for row, (_, entries) in enumerate(table)
        for entry in entries
        if name == entry or (entry != PACKAGE and name.startswith(entry + "."))
    ]
    assert matches, f"{name} is in no row of the layer table in {PACKAGE}/__init__.py"
    return max(matches)[1]


def violations(root: pathlib.Path) -> list[str]:
    """Every import that goes up a layer, and every cycle between modules, as one line each."""
    table, modules = layer_table(root), module_names(root)
    graph = {name: imports(name, path, modules) for name, path in modules.items()}
    layer = {name: layer_of(name, table) for name in graph}
    found = [
        f"{name} ({table[layer[name]][0]}) imports {target} ({table[layer[target]][0]})"
        for name, targets in graph.items()
        for target in sorted(targets)
        if layer[target] > layer[name]
    ]
    return found + [" -> ".join(cycle) for cycle in cycles(graph)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_every_import_goes_down_a_layer_or_across_it_without_a_cycle():
    assert violations(REPO / PACKAGE) == []


def test_an_upward_import_or_a_cycle_is_caught_function_local_too(tmp_path):
    root = tmp_path / PACKAGE
    shutil.copytree(REPO / PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    for module, line in (
        ("serving/loading.py", "from keras_resnet.training import procedure"),
        ("models/network.py", "from keras_resnet.models import builder"),
    ):
        path = root / module
        path.write_text(f"{path.read_text()}\n\ndef later():\n    {line}\n")
    assert violations(root) == [
        "keras_resnet.serving.loading (serving) imports keras_resnet.training.procedure (training)",
        "keras_resnet.models.builder -> keras_resnet.models.network -> keras_resnet.models.builder",
    ]


def printing(root: pathlib.Path) -> list[str]:
    """Every `print(` call in a module of the package outside PRINTING, as `module:line`."""
    allowed = {f"{PACKAGE}.{name}" for name in PRINTING}
    return [
        f"{name}:{node.lineno}"
        for name, path in module_names(root).items()
        if name not in allowed
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "print"
    ]


def test_only_the_commands_and_the_progress_display_print():
    assert printing(REPO / PACKAGE) == []


def test_a_print_in_a_library_module_is_caught_but_not_in_a_command(tmp_path):
    root = tmp_path / PACKAGE
    shutil.copytree(REPO / PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    for module in ("training/steps.py", "predict.py"):
        path = root / module
        path.write_text(f"{path.read_text()}\n\ndef later():\n    print('done')\n")
    line = len((root / "training/steps.py").read_text().splitlines())
    assert printing(root) == [f"{PACKAGE}.training.steps:{line}"]


def too_long(repo: pathlib.Path) -> list[str]:
    """Every module over MODULE_LINES and function over FUNCTION_LINES, as `path: n lines` or
    `path:line name: n lines`."""
    paths = [*(repo / PACKAGE).rglob("*.py"), *(repo / "bench").glob("*.py"), *(repo / "export").glob("*.py")]
    found = []
    for path in sorted([*paths, repo / "train.py"]):
        text, name = path.read_text(), path.relative_to(repo)
        if len(text.splitlines()) > MODULE_LINES:
            found.append(f"{name}: {len(text.splitlines())} lines")
        found += [
            f"{name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > FUNCTION_LINES
        ]
    return found


def test_no_module_over_450_lines_and_no_function_over_80():
    assert too_long(REPO) == []


def test_a_long_function_and_a_long_module_are_caught(tmp_path):
    for folder in (PACKAGE, "bench", "export"):
        shutil.copytree(
            REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "weights")
        )
    shutil.copy(REPO / "train.py", tmp_path / "train.py")
    body = "".join(f"    x{i} = {i}\n" for i in range(80))  # with its `def`: 81 lines
    (tmp_path / "bench" / "long.py").write_text(f"def long():\n{body}" + "\n" * 370)
    assert too_long(tmp_path) == ["bench/long.py: 451 lines", "bench/long.py:1 long: 81 lines"]
