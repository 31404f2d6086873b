#!/usr/bin/env bash
# The README's test command: on a fresh machine with only python3 it installs the system packages the
# suite needs (scripts/system-packages.sh), a virtual environment with moshikit and its test extras,
# then runs pytest (in random order: pytest-randomly; pass -p no:randomly for the file order).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-packages.sh
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e ".[mlx,test]"
exec .venv/bin/python -m pytest "$@"
