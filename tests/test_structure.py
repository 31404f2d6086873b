"""The package's shape: imports only go down the layers (no circle, no product module importing the test
helpers), and what one module uses of another is public (no ``_name`` crosses a module)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    """No product module over 450 lines (the test helpers in testing/ aside; the synthetic checkpoints
    ship, so they count): a module holds one room."""
    big = {p.relative_to(PACKAGE).as_posix(): n for p in PACKAGE.rglob("*.py")
           if "testing" not in p.parts and (n := len(p.read_text().splitlines())) > 450}
    assert big == {}


# The layers, top to bottom: a module imports only from its own layer or below (its own layer without a
# circle), lazy imports inside functions included. The longest matching prefix names a module's layer.
LAYERS = {
    # 5: helpers for tests and measurements (CUDA-graph stand-ins, a Ray cluster, moshi's server, speed
    # probes, the GPU proof): they may use anything; no product module imports them.
    "moshikit.testing": 5,
    # 4: the CLI: parse, call the command's library, render.
    "moshikit.cli": 4, "moshikit.__main__": 4,
    # 3: the Python API and each command's library: what a command does, in typed results.
    "moshikit": 3, "moshikit.api": 3, "moshikit.codec": 3, "moshikit.stt": 3, "moshikit.translate": 3,
    "moshikit.chat": 3, "moshikit.live": 3, "moshikit.remote": 3, "moshikit.serve": 3, "moshikit.webpage": 3,
    "moshikit.bench": 3, "moshikit.distributed": 3, "moshikit.loading": 3, "moshikit.hubcache": 3,
    "moshikit.tts.files": 3, "moshikit.tts.play": 3, "moshikit.agent": 3,
    # 2: models and backends (one module per backend), the model resolver (hub) and the synthetic
    # checkpoints it can resolve to.
    "moshikit.backends": 2, "moshikit.hub": 2, "moshikit.synthetic": 2, "moshikit.tts": 2,
    "moshikit.conversation": 2,
    # 1: files from the Hugging Face hub (plans, fetches, the cache's paths).
    "moshikit.download": 1,
    # 0: the ground: errors, atomic writes, audio, token files, transcripts, file jobs, platform facts (what this
    # machine is and offers, the catalog of models), wire formats, and the backends' table and Protocols
    # (``backends.registry`` and ``backends.base``: data and typing only, no backend code).
    "moshikit.errors": 0, "moshikit.atomic": 0, "moshikit.audio": 0, "moshikit.tokens": 0,
    "moshikit.transcript": 0, "moshikit.platform": 0, "moshikit.cpu_precision": 0, "moshikit.catalog": 0,
    "moshikit.catalog_pocket": 0, "moshikit.catalog_machine": 0, "moshikit.version": 0, "moshikit.wire": 0,
    "moshikit.access": 0, "moshikit.origins": 0, "moshikit.clienttext": 0, "moshikit.inputs": 0, "moshikit.filejobs": 0,
    "moshikit.chatparams": 0, "moshikit.aec": 0, "moshikit.mic": 0, "moshikit.tts.text": 0,
    "moshikit.backends.registry": 0, "moshikit.backends.base": 0,
}


def module_names(root: Path) -> dict[str, Path]:
    """Every module under ``root/moshikit`` by dotted name (a package by its own name)."""
    names = {}
    for path in sorted((root / "moshikit").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(name: str, path: Path, names: dict[str, Path]) -> list[tuple[str, int]]:
    """(module, line) for every moshikit import in ``path``, anywhere in it (functions, ``TYPE_CHECKING``),
    relative ones resolved; ``from pkg import mod`` counts as importing ``pkg.mod``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def known(dotted: str) -> str:
        while dotted not in names:
            dotted = dotted.rpartition(".")[0]
        return dotted

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(known(a.name), node.lineno) for a in node.names if a.name.split(".")[0] == "moshikit"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "moshikit":
                continue
            for a in node.names:
                full = f"{source}.{a.name}"
                found.append((full if full in names else known(source), node.lineno))
    return sorted({(target, line) for target, line in found if target != name})


def layer_of(name: str) -> int:
    prefix = name
    while prefix not in LAYERS:
        if "." not in prefix:
            raise AssertionError(f"{name}: no layer in LAYERS")
        prefix = prefix.rpartition(".")[0]
    return LAYERS[prefix]


def structure_faults(root: Path = PACKAGE.parent) -> list[str]:
    """What breaks the layers in the package under ``root``: an import to a higher layer, a product
    module importing the test helpers, a circle of imports between modules."""
    names = module_names(root)
    graph = {name: imports_of(name, path, names) for name, path in names.items()}
    faults = []
    for name, edges in graph.items():
        where = names[name].relative_to(root).as_posix()
        for target, line in edges:
            if layer_of(target) > layer_of(name):
                faults.append(f"{where}:{line}: {name} (layer {layer_of(name)}) imports {target} "
                              f"(layer {layer_of(target)})")
            if target.startswith("moshikit.testing") and not name.startswith("moshikit.testing"):
                faults.append(f"{where}:{line}: product module {name} imports the test helper {target}")
    faults += [f"circle: {' -> '.join(c)}" for c in circles({n: {t for t, _ in e} for n, e in graph.items()})]
    return faults


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_imports_only_go_down():
    assert structure_faults() == []


def test_the_check_sees_upward_imports_circles_and_test_helpers(tmp_path):
    files = {
        "__init__.py": "",
        "errors.py": "def hint():\n    from .cli import app\n",  # lazy, and still up
        "cli/__init__.py": "", "cli/app.py": "from ..codec import x\n",
        "codec.py": "from . import stt\n", "stt.py": "import moshikit.codec\n",  # a circle in one layer
        "hub/__init__.py": "if True:\n    from ..testing.ray_cluster import LocalCluster\n",
        "testing/__init__.py": "", "testing/ray_cluster.py": "from moshikit.cli import app\n",
    }
    for name, text in files.items():
        (tmp_path / "moshikit" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "moshikit" / name).write_text(text)
    assert structure_faults(tmp_path) == [
        "moshikit/errors.py:2: moshikit.errors (layer 0) imports moshikit.cli.app (layer 4)",
        "moshikit/hub/__init__.py:2: moshikit.hub (layer 2) imports moshikit.testing.ray_cluster (layer 5)",
        "moshikit/hub/__init__.py:2: product module moshikit.hub imports the test helper moshikit.testing.ray_cluster",
        "circle: moshikit.codec -> moshikit.stt",
    ]


def test_every_module_has_a_layer():
    assert [n for n in module_names(PACKAGE.parent) if not any(
        n == p or n.startswith(p + ".") for p in LAYERS)] == []


@pytest.mark.slow
def test_the_farthest_reaching_commands_import_no_test_helper(tmp_path, speech):
    """``speak -b pocket`` and ``transcribe`` on synthetic models, in a fresh process: nothing of
    ``moshikit.testing`` is loaded (the import graph above says so for the code; this says it for a run)."""
    import soundfile as sf

    pytest.importorskip("pocket_tts")
    sf.write(tmp_path / "in.wav", speech[:24000 * 2], 24000)
    script = ("import json, sys\nfrom moshikit.cli.app import main\ncodes = ["
              "main(['speak', '-b', 'pocket', '-m', 'synthetic', 'Hello there.', '-o', sys.argv[1] + '/out.wav']), "
              "main(['transcribe', '-m', 'synthetic', sys.argv[1] + '/in.wav', '-o', sys.argv[1] + '/in.txt'])]\n"
              "print(json.dumps([codes, sorted(m for m in sys.modules if m.startswith('moshikit.testing'))]))\n")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)}, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    codes, loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert codes == [0, 0] and (tmp_path / "out.wav").is_file() and (tmp_path / "in.txt").is_file(), run.stderr
    assert loaded == []
