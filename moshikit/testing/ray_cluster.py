"""A throwaway multi-node Ray cluster on loopback, for tests and benchmarks.

``ray start --head --block`` plus ``ray start --address ... --block`` per worker node,
each in its own process group, every port chosen free (so clusters of other users on
the same machine are left alone), torn down by killing exactly those groups.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..distributed import ray_token_available


def _free_ports(n: int, taken: set[int]) -> list[int]:
    """``n`` free ports, distinct from each other and from ``taken`` (which they join): a port the
    kernel hands out, released, can come back on the next ask, and Ray refuses two components on
    one port."""
    held, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in taken:
                ports.append(port)
                taken.add(port)
    finally:
        for s in held:
            s.close()
    return ports


def _port_args(head: bool, taken: set[int]) -> list[str]:
    names = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
             "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port"]
    if head:
        names += ["--dashboard-port"]
    args = []
    for name, port in zip(names, _free_ports(len(names), taken)):
        args += [name, str(port)]
    return args


class LocalCluster:
    """``with LocalCluster(workers=1) as c: c.address`` -- head plus ``workers`` nodes."""

    def __init__(self, workers: int = 1, cpus: int = 1, object_store_mb: int = 200, env: dict | None = None,
                 pythonpath: str | None = None) -> None:
        self.workers, self.cpus, self.store = workers, cpus, object_store_mb * 1024 * 1024
        self.env = dict(os.environ, **(env or {}))
        root = pythonpath or str(Path(__file__).resolve().parents[2])
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (root, self.env.get("PYTHONPATH")) if p)
        self.env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if "RAY_AUTH_MODE" not in self.env and ray_token_available(self.env):
            # `ray start --head` turns token authentication on when it finds a token, `ray start
            # --address` does not: say it to every node, or the workers cannot join the head.
            self.env["RAY_AUTH_MODE"] = "token"
        self.tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths are length-limited
        self._taken: set[int] = set()
        self.address = f"127.0.0.1:{_free_ports(1, self._taken)[0]}"
        self.procs: list[subprocess.Popen] = []
        self._ray = str(Path(sys.executable).with_name("ray"))

    def _start(self, args: list[str]) -> subprocess.Popen:
        log = open(os.path.join(self.tmp, f"node{len(self.procs)}.log"), "wb")
        p = subprocess.Popen([self._ray, "start", "--block", "--disable-usage-stats", "--num-cpus", str(self.cpus),
                              "--num-gpus", "0", "--object-store-memory", str(self.store),
                              "--node-ip-address", "127.0.0.1", *args],
                             env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def start(self) -> "LocalCluster":
        port = self.address.rsplit(":", 1)[1]
        self._start(["--head", "--port", port, "--temp-dir", self.tmp, "--include-dashboard=false",
                     *_port_args(True, self._taken)])
        self._wait_port(int(port))
        for _ in range(self.workers):
            self._start(["--address", self.address, *_port_args(False, self._taken)])
        self.wait_nodes(self.workers + 1)
        return self

    def _wait_port(self, port: int, timeout: float = 60) -> None:
        end = time.time() + timeout
        while time.time() < end:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            if self.procs[0].poll() is not None:
                raise RuntimeError(f"ray head exited: {self.log(0)[-2000:]}")
            time.sleep(0.2)
        raise RuntimeError("ray head did not open its port")

    def log(self, i: int) -> str:
        try:
            return Path(self.tmp, f"node{i}.log").read_text(errors="replace")
        except OSError:
            return ""

    def alive_nodes(self) -> int:
        out = subprocess.run([self._ray, "list", "nodes", "--address", self.address, "--format", "json"],
                             env=self.env, capture_output=True, text=True, timeout=60)
        import json

        try:
            return sum(n.get("state") == "ALIVE" for n in json.loads(out.stdout))
        except json.JSONDecodeError:
            return 0

    def wait_nodes(self, n: int, timeout: float = 90) -> None:
        """Wait until ``n`` nodes are alive, asked by a driver in its own process with the
        cluster's environment (its home, its authentication), as a user's command connects."""
        code = ("import sys, time, ray\n"
                "from moshikit.distributed import connect\n"
                f"connect({self.address!r})\n"
                f"end = time.time() + {timeout}\n"
                "while time.time() < end:\n"
                "    alive = sum(1 for x in ray.nodes() if x['Alive'])\n"
                f"    if alive >= {n}:\n"
                "        sys.exit(0)\n"
                "    time.sleep(0.5)\n"
                f"sys.exit(f'only {{alive}} of {n} Ray nodes came up')\n")
        r = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                           timeout=timeout + 60)
        if r.returncode != 0:
            raise RuntimeError(f"waiting for {n} Ray nodes: {r.stderr[-2000:]}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = time.time() + 3
        for p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                pass
            try:  # what the node started (gcs, raylet, workers) shares its process group
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
