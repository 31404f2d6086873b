"""``moshikit serve --ray``: the same application on Ray Serve.

One Ray Serve deployment (``moshikit``) whose replicas each load the served models through the
same factories as the standalone server and serve ``ServerApp``'s ASGI application through Ray
Serve's ingress (``serve.ingress(builder)``: the builder runs on each replica, so the models are
loaded there, never pickled). Ray's HTTP proxy takes the requests and WebSockets on the given
host and port and routes each to a replica with room: ``max_ongoing`` is what one replica takes
at once (its streams and requests; past it on every replica, Ray's proxy holds the request in its
queue). ``replicas`` replicas, each reserving ``num_gpus`` GPUs (a fraction shares one) or
``num_cpus`` CPUs.

Every reply names its replica (header ``x-moshikit-replica``, ``host:pid``), so a client and the
tests see where a stream went. A replica that dies mid-stream: Ray's proxy ends that replica's
streams, and ``ReplicaLost`` (a middleware in the proxy) closes each with 1011 and one reason
instead of a dropped connection; the other replicas' streams go on, and Ray starts a new
replica. The token and Origin checks are the application's own (``app.Gate``), so they hold
under Ray as they do standalone; the standalone connection guard (``serve.guard``) is uvicorn's
and has no counterpart in Ray's proxy.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable

from ..clienttext import shown
from ..errors import BackendUnavailable, MoshikitError, UsageError
from .http import CLOSE_FAILED
from .session import ServeConfig

DEPLOYMENT = "moshikit"
REPLICA_HEADER = b"x-moshikit-replica"
LOST_REASON = "the server replica of this stream failed; connect again"
PROTOBUF_HINT = ('pip install "protobuf<7" (older Ray Serve releases, 2.53 among them, read '
                 "FieldDescriptor.label, which protobuf 7 removed: ray-project/ray#64710)")


@dataclass
class RaySpec:
    """What ``serve --ray`` deploys: ``loaders`` (picklable callables, each returning a ``Service``:
    ``functools.partial`` of a module-level factory), the server's configuration, and the replicas."""

    loaders: list[Callable]
    cfg: ServeConfig = field(default_factory=ServeConfig)
    replicas: int = 1
    num_cpus: float | None = None  # None: see replica_resources
    num_gpus: float | None = None
    device: str | None = None  # the models' device: a CUDA one (or auto on a cluster with GPUs) reserves GPUs
    max_ongoing: int = 8
    health_check_seconds: float = 2.0
    start_tries: int = 3  # a replica that fails to load its models this many times fails the deployment


def replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ReplicaTag:
    """ASGI middleware on each replica: every HTTP reply and WebSocket accept names the replica."""

    def __init__(self, app) -> None:
        self.app = app
        self.name = replica_name().encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)

        async def tagged(message):
            if message["type"] in ("http.response.start", "websocket.accept"):
                message = dict(message, headers=[*message.get("headers", []), (REPLICA_HEADER, self.name)])
            await send(message)

        await self.app(scope, receive, tagged)

    def add_exception_handler(self, exc, handler) -> None:
        """What Ray Serve calls on an ingress application (a Starlette one, it assumes): passed to the
        Starlette application under the middlewares (``ServerApp``'s ``Gate`` wraps one)."""
        inner = self.app
        while not hasattr(inner, "add_exception_handler"):
            inner = inner.app
        inner.add_exception_handler(exc, handler)


class ReplicaLost:
    """ASGI middleware in Ray's proxy: a WebSocket that was accepted and ended without a close
    (its replica died) is closed with 1011 and ``LOST_REASON``, one message the client can read."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        state = {"accepted": False, "closed": False}

        async def watched(message):
            kind = message["type"]
            state["accepted"] |= kind == "websocket.accept"
            state["closed"] |= kind == "websocket.close"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            if state["accepted"] and not state["closed"]:
                try:
                    await send({"type": "websocket.close", "code": CLOSE_FAILED, "reason": LOST_REASON})
                except Exception:  # noqa: BLE001 (the client left first: nothing to tell it)
                    pass


def build_asgi(spec: RaySpec, port: int):
    """On a replica: load the services and return the application (``ServerApp.asgi``), its log
    lines in the replica's log, Origin checks for the proxy's ``port``."""
    from .app import ServerApp

    logger = logging.getLogger("ray.serve")
    services = [load() for load in spec.loaders]
    app = ServerApp(services, spec.cfg, log=lambda line: logger.warning("moshikit: %s", line))
    app.listening([port])
    return ReplicaTag(app.asgi)


def check_ray_serve():
    """Import Ray Serve, or one error that says what to install."""
    from ..distributed import require_ray

    require_ray()
    try:
        from ray import serve
    except ImportError:
        raise BackendUnavailable("--ray needs Ray Serve, which is not installed here",
                                 hint='pip install "ray[serve]"') from None
    if not serve_protobuf_ok():
        raise BackendUnavailable("this Ray Serve cannot deploy with the installed protobuf 7",
                                 hint=PROTOBUF_HINT)
    return serve


def serve_protobuf_ok() -> bool:
    """Whether Ray Serve's controller can read its own configuration with the installed protobuf
    (older Ray Serve releases read ``FieldDescriptor.label``, gone in protobuf 7)."""
    import importlib.util

    from google.protobuf.descriptor import FieldDescriptor

    if hasattr(FieldDescriptor, "label"):
        return True
    spec = importlib.util.find_spec("ray.serve._private.config")
    try:
        with open(spec.origin, encoding="utf-8") as f:
            return "field.label ==" not in f.read()
    except (AttributeError, TypeError, OSError):
        return True


def application(spec: RaySpec, port: int):
    """The bound Ray Serve application of ``spec`` (a deployment of ``spec.replicas`` replicas)."""
    from ray import serve

    def builder():  # run on each replica (serve.ingress calls a plain function there)
        return build_asgi(spec, port)

    options = {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus}
    deployment = serve.deployment(serve.ingress(builder)(), name=DEPLOYMENT, num_replicas=spec.replicas,
                                  ray_actor_options=options, max_ongoing_requests=spec.max_ongoing,
                                  health_check_period_s=spec.health_check_seconds,
                                  health_check_timeout_s=max(10.0, 5 * spec.health_check_seconds),
                                  max_constructor_retry_count=spec.start_tries)
    return deployment.bind()


def replica_resources(device: str | None, *, cpus: float | None = None, gpus: float | None = None,
                      cluster_gpus: float = 0.0) -> tuple[float, float]:
    """``(num_cpus, num_gpus)`` each replica reserves: ``gpus`` when given (a fraction puts several
    replicas on one GPU); otherwise one GPU for a CUDA device, or for no device (``auto``) on a
    cluster that has GPUs; else ``cpus`` (default 1) and no GPU."""
    if gpus is not None and gpus < 0 or cpus is not None and cpus <= 0:
        raise UsageError("replicas reserve a positive number of CPUs and no negative number of GPUs")
    on_gpu = (device or "auto").startswith("cuda") or ((device or "auto") == "auto" and cluster_gpus > 0)
    if gpus is None:
        gpus = 1.0 if on_gpu else 0.0
    if gpus > 0 and cluster_gpus and gpus > cluster_gpus:
        raise UsageError(f"each replica asks for {gpus:g} GPUs; the cluster has {cluster_gpus:g}")
    return (cpus if cpus is not None else 1.0), gpus


def start_on_ray(spec: RaySpec, *, address: str | None = None) -> str:
    """Connect to the cluster (``local`` starts a private one), start Ray Serve's proxy on the
    configuration's host and port, deploy, and return the base URL (``http://host:port``). The
    deployment runs until ``stop_on_ray()``."""
    from ..distributed import connect

    serve = check_ray_serve()
    from ray.serve.config import HTTPOptions
    from starlette.middleware import Middleware

    port = spec.cfg.port or free_port(spec.cfg.host)
    options = {}
    if proxy_takes_middlewares():
        options["middlewares"] = [Middleware(ReplicaLost)]
    else:  # Ray 2.54 and later: a callback the proxy imports (started here: it inherits this environment)
        os.environ.setdefault(PROXY_CALLBACK, "moshikit.serve.ray_app.proxy_middlewares")
    ray = connect(address)
    cpus, gpus = replica_resources(spec.device, cpus=spec.num_cpus, gpus=spec.num_gpus,
                                   cluster_gpus=float(ray.cluster_resources().get("GPU", 0)))
    spec = dataclasses.replace(spec, num_cpus=cpus, num_gpus=gpus)
    quiet = logging.getLogger("ray.serve")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # Ray's INFO lines, and serve.run's note that serve.start's options hold
    try:
        with warnings.catch_warnings():  # proxy middlewares are "deprecated" for FastAPI's, which a proxy has not
            warnings.simplefilter("ignore", UserWarning)
            serve.start(http_options=HTTPOptions(host=spec.cfg.host, port=port, **options))
        try:
            serve.run(application(spec, port), name=DEPLOYMENT, route_prefix="/", blocking=False)
        except RuntimeError as exc:  # the replicas could not start: say why, in one line
            raise MoshikitError(f"the Ray replicas could not start the server: {deploy_failure(exc)}",
                                hint="the replicas' logs are in the Ray session's logs (ray logs)") from None
    finally:
        quiet.setLevel(level)
    host = spec.cfg.host if ":" not in spec.cfg.host else f"[{spec.cfg.host}]"
    return f"http://{host}:{port}"


#: The environment variable naming a function whose middlewares Ray Serve's proxy runs (Ray >= 2.54).
PROXY_CALLBACK = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"


def proxy_takes_middlewares() -> bool:
    """Whether this Ray Serve takes proxy middlewares in ``HTTPOptions`` (before 2.54; later ones
    take them from ``PROXY_CALLBACK`` only)."""
    from importlib.metadata import version

    try:
        major, minor = (int(x) for x in version("ray").split(".")[:2])
    except ValueError:
        return False
    return (major, minor) < (2, 54)


def proxy_middlewares() -> list:
    """What Ray Serve's proxy runs in front of the replicas (imported by the proxy by name)."""
    from starlette.middleware import Middleware

    return [Middleware(ReplicaLost)]


def deploy_failure(exc: BaseException) -> str:
    """The last line of what the replicas raised (the deployment's status holds their traceback)."""
    from ray import serve

    try:
        message = serve.status().applications[DEPLOYMENT].deployments[DEPLOYMENT].message
    except Exception:  # noqa: BLE001 (no status to read: Ray's own message is all there is)
        message = str(exc)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return shown(lines[-1] if lines else type(exc).__name__, 300)


def serve_on_ray(spec: RaySpec, on_ready: Callable[[str], None], *, address: str | None = None,
                 stop: threading.Event | None = None) -> None:
    """Deploy ``spec``, call ``on_ready(base_url)``, and hold it until Ctrl-C (or ``stop``); then take
    Ray Serve down, and the cluster with it when it was a private one (``address`` ``local``)."""
    import ray

    try:
        on_ready(start_on_ray(spec, address=address))
        (stop or threading.Event()).wait()
    except KeyboardInterrupt:
        pass
    finally:
        if ray.is_initialized():
            try:
                stop_on_ray()
            finally:
                if address == "local":
                    ray.shutdown()


def stop_on_ray() -> None:
    """Take the deployment and Ray Serve down (the cluster stays: ``ray.shutdown`` ends a private one)."""
    from ray import serve

    serve.shutdown()


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def chat_service(model: str | None, cfg: ServeConfig, **load):
    """A chat service (``ChatServer``) on ``load_conversation(model, **load)``: a module-level
    factory, so a replica can rebuild it from its name."""
    from .model import load_conversation
    from .server import ChatServer

    return ChatServer(load_conversation(model, **load), cfg, model=model or "moshiko")


__all__ = ["DEPLOYMENT", "LOST_REASON", "REPLICA_HEADER", "RaySpec", "ReplicaLost", "ReplicaTag", "application", "proxy_middlewares", "proxy_takes_middlewares",
           "build_asgi", "chat_service", "check_ray_serve", "deploy_failure", "free_port", "replica_name",
           "replica_resources", "serve_on_ray", "serve_protobuf_ok", "start_on_ray", "stop_on_ray"]
