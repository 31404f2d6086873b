"""moshikit: one command-line toolkit for Kyutai's Moshi stack."""

__version__ = "0.1.0"

# Before any moshikit module can import moshi: moshi reads its switches at import time.
from .backends import torch_env as _torch_env  # noqa: E402

_torch_env.prepare()
