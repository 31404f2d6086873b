"""Run moshi's own chat server (``python -m moshi.server``) on a checkpoint directory, on a CPU.

Used by the tests (and handy by hand) to check ``moshikit chat --url`` against the
reference server. Two adjustments make it run without a GPU or the network:
``--static none`` (else it downloads its web UI) and a no-op ``torch.cuda.synchronize``
(its warm-up calls it unconditionally).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

_WRAPPER = ("import sys, runpy, torch; torch.cuda.synchronize = lambda *a, **k: None; "
            "sys.argv = ['moshi.server'] + sys.argv[1:]; runpy.run_module('moshi.server', run_name='__main__')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OfficialServer:
    """``python -m moshi.server`` in a subprocess; ``url`` once it listens; ``stop()``."""

    def __init__(self, repo: str | os.PathLike, *, port: int | None = None, timeout: float = 180.0,
                 log: str | os.PathLike | None = None, static: str | os.PathLike | None = None) -> None:
        """``static``: a folder of a web client to serve at / (moshikit's page: webpage.PAGE_DIR)."""
        repo = Path(repo)
        config = json.loads((repo / "config.json").read_text())
        self.port = port or free_port()
        self.url = f"ws://127.0.0.1:{self.port}/api/chat"
        cmd = [sys.executable, "-c", _WRAPPER, "--static", str(static) if static else "none", "--host", "127.0.0.1", "--port", str(self.port),
               "--device", "cpu", "--moshi-weight", str(repo / config["moshi_name"]),
               "--mimi-weight", str(repo / config["mimi_name"]), "--tokenizer", str(repo / config["tokenizer_name"]),
               "--config-path", str(repo / "config.json")]
        env = dict(os.environ, NO_TORCH_COMPILE="1", NO_CUDA_GRAPH="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
        self._log = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moshi.server exited with code {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moshi.server did not listen on port {self.port} within {timeout:g} s")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def __enter__(self) -> "OfficialServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
