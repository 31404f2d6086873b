#!/usr/bin/env bash
# Simulate the machine lent to this project, for the GPU proof's CPU dry run
# (tests/testing/test_gpu_proof.py::test_dry_run_with_only_the_carried_wheels).
#
#     scripts/lent-env.sh [ENV] [SITE]
#
# ENV (default /tmp/lent-env): a fresh venv (no system site-packages) holding only what the lent
# machine has: torch, numpy and onnxruntime, linked from SITE (the site-packages of the developers'
# venv: .venv's, or from a worktree the main checkout's) with what they import (torch's sympy,
# networkx, jinja2, filelock, fsspec, triton and nvidia libraries; onnxruntime's flatbuffers,
# packaging, protobuf), and huggingface_hub 1.x with its dependencies from the package index, as
# the lent machine has it. Then the wheels of scripts/gpu-wheels.py, fetched for ENV's Python,
# installed into ENV/lent with pip's --target as the lent machine does (scripts/gpu-wheels.py's
# docstring). It prints the test's command. The lent machine's Python is 3.12; ENV's is SITE's,
# whose compiled packages it links.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=${1:-/tmp/lent-env}
MAIN=$(git worktree list --porcelain | sed -n '1s/^worktree //p')  # a worktree's venv is the main checkout's
VENV=$([ -x .venv/bin/python ] && echo .venv || echo "$MAIN/.venv")
SITE=${2:-$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')}
BASE=$(sed -n 's/^executable = //p' "$SITE/../../../pyvenv.cfg")  # the interpreter SITE was built for
rm -rf "$ENV"
"$BASE" -m venv "$ENV"
PY=$ENV/bin/python
PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
DEST=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# Link each distribution's top-level entries (from its RECORD) and its .dist-info; inside a
# namespace folder without __init__.py (google/), only the distribution's own subfolder.
"$PY" - "$SITE" "$DEST" <<'EOF'
import sys
from pathlib import Path

site, dest = Path(sys.argv[1]), Path(sys.argv[2])
names = ["torch", "triton", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "filelock", "fsspec",
         "typing_extensions", "numpy", "onnxruntime", "flatbuffers", "packaging", "protobuf"]
infos = [i for n in names for i in site.glob(f"{n}-*.dist-info")] + sorted(site.glob("nvidia_*.dist-info"))
missing = [n for n in names if not list(site.glob(f"{n}-*.dist-info"))]
assert not missing, f"not in {site}: {missing}"
for info in infos:
    entries = {info.name}
    for line in (info / "RECORD").read_text().splitlines():
        parts = Path(line.split(",")[0]).parts
        if not parts or parts[0].endswith(".dist-info") or parts[0] in ("..", "__pycache__"):
            continue
        top = parts[0]
        if (site / top).is_dir() and not (site / top / "__init__.py").exists() and len(parts) > 2:
            top = f"{top}/{parts[1]}"  # a namespace package: only this distribution's part
        entries.add(top)
    for e in sorted(entries):
        target = dest / e
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(site / e)
print(f"linked {len(infos)} distributions from {site}")
EOF

"$PY" -m pip install -q "huggingface_hub>=1,<2"
"$PY" scripts/gpu-wheels.py --dest "$ENV/wheels" --python-version "$PYVER"
"$PY" -m pip install -q --no-index --no-deps --target "$ENV/lent" "$ENV"/wheels/*.whl
"$PY" -c 'import torch, numpy, onnxruntime, huggingface_hub as h; print("torch", torch.__version__, "hub", h.__version__)'
echo "MOSHIKIT_LENT_PYTHON=$PY MOSHIKIT_LENT_PATH=$ENV/lent PYTHONPATH=\$PWD $VENV/bin/python -m pytest -m slow" \
     "tests/testing/test_gpu_proof.py -k carried_wheels -q -p no:randomly"
