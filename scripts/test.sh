#!/usr/bin/env bash
# The README's test command: on a fresh machine with only python3 it installs the system packages the
# suite needs (scripts/system-packages.sh), a virtual environment with moshikit and its test extras,
# then runs pytest (in random order: pytest-randomly; pass -p no:randomly for the file order).
# Extra arguments go to pytest (and then only that one run is made).
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
if [ $# -gt 0 ]; then exec .venv/bin/python -m pytest "$@"; fi
# The whole suite on this CPU's best kernels, then the tests that compare two code paths' numbers
# (marker `numerics`, tests/conftest.py) again with another kernel set forced: AVX2 for ATen, oneDNN
# and MKL (no AVX-512, no AMX) on one thread (ONNX Runtime follows torch's thread count); the CPU
# engine's kernel choices follow ONEDNN_MAX_CPU_ISA too (cpu_precision.cpu_flags: an AVX2 CPU's 7-bit
# int8 activations, float32 caches). An assert that holds only on the CPU it was written on fails here.
# Then the CPU engine's equality tests (tests/backends/test_cpu_*.py: moshi's tokens, logits within
# their dB) on the kernels an AMD EPYC (Zen 4: AVX-512 VNNI and BF16, no AMX) gets: oneDNN capped
# below AMX, so its int8 and bf16 products, and the engine's choices, are a Zen 4's on an Intel CPU too.
status=0
.venv/bin/python -m pytest || status=$?
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 OMP_NUM_THREADS=1 \
  .venv/bin/python -m pytest -m "numerics and not slow" -p no:randomly || status=$?
ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 \
  .venv/bin/python -m pytest -m "not slow" -p no:randomly tests/backends/test_cpu_engine.py \
  tests/backends/test_cpu_depth.py tests/backends/test_cpu_tts.py || status=$?
exit $status
