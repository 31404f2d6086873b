"""The package's shape: what one module uses of another is public (no ``_name`` crosses a module)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "moshikit"


def _private_crossings(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    tree = ast.parse(path.read_text())
    modules: set[str] = set()  # names bound to moshikit modules in this file
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("moshikit")):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: imports {alias.name}")
                modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path.relative_to(root)}:{node.lineno}: uses {node.value.id}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module():
    found = [f for p in sorted(PACKAGE.rglob("*.py")) for f in _private_crossings(p)]
    assert found == []


def test_the_check_sees_a_crossing(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("from .download import _slot, plan\nfrom . import chat as lib\nlib._small(lib.ok, self._x)\n")
    assert _private_crossings(bad, tmp_path) == ["m.py:1: imports _slot", "m.py:3: uses lib._small"]


def test_the_cli_exits_with_named_statuses():
    """Exit statuses come from ``ExitStatus`` (or an error's ``exit_code``), never a bare number."""
    found = []
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Exit" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                found.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant) and node.value.value in (1, 2, 130):
                found.append(f"{path.name}:{node.lineno}: return {node.value.value}")
    assert found == []


def test_interrupted_statuses():
    from moshikit.errors import ExitStatus, Terminated, interrupted_status

    assert interrupted_status(KeyboardInterrupt()) == ("interrupted", 130) == ("interrupted", ExitStatus.INTERRUPTED)
    assert interrupted_status(Terminated(15)) == ("terminated", 143)
    assert interrupted_status(Terminated(1)) == ("terminated", 129)


def test_the_cli_writes_only_through_out():
    """Commands write through ``Out`` (so ``main(argv, env)`` captures everything): no print(), no
    sys.stdout/sys.stderr writes, no Rich Console of their own. output.py is ``Out``; chat_ui's live
    panel owns the terminal itself (it moves fd 2 under the panel and reads keys from the tty)."""
    found = []
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        if path.name in ("output.py", "chat_ui.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("print", "Console"):
                found.append(f"{path.name}:{node.lineno}: {node.func.id}()")
            if (isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr", "stdin")
                    and isinstance(node.value, ast.Name) and node.value.id == "sys"):
                found.append(f"{path.name}:{node.lineno}: sys.{node.attr}")
    assert found == []


def test_no_module_is_a_warehouse():
    """No library module over ~450 lines (tests, testing/ and synthetic/ aside): a module holds one room."""
    big = {p.relative_to(PACKAGE).as_posix(): n for p in PACKAGE.rglob("*.py")
           if not {"testing", "synthetic"} & set(p.parts) and (n := len(p.read_text().splitlines())) > 460}
    assert big == {}
