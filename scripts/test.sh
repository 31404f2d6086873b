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
# Pocket TTS without its own dependency list (it asks for sentencepiece>=0.2.1, which moshi_mlx's pin of
# 0.2.0 forbids, and for a web server moshikit does not use): only what `import pocket_tts` needs.
.venv/bin/pip install -q --no-deps pocket-tts==4.0.1
.venv/bin/pip install -q "einops>=0.4" "pydantic>=2" "pyyaml>=6" "requests>=2.20" "scipy>=1.5" "tokenizers>=0.21" \
  "typing-extensions>=4.10"
exec .venv/bin/python -m pytest "$@"
