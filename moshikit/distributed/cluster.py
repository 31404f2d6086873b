"""Reaching a Ray cluster: import, token authentication, connection errors in one line."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BackendUnavailable, MoshikitError
from .storage import INSTALL_HINT


def require_ray():
    """Import Ray, or a one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise BackendUnavailable("--ray needs Ray, which is not installed here", hint=INSTALL_HINT) from None
    return ray


RAY_TOKEN_HINT = ("if the cluster uses token authentication, set RAY_AUTH_MODE=token and give its token in "
                  "RAY_AUTH_TOKEN (or a file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token)")


def ray_token_available(env: dict | None = None) -> bool:
    """Whether Ray would find an authentication token in ``env`` (default: this process's):
    ``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token`` (where
    ``ray.init()`` writes one when it starts a local cluster, and ``ray start --head`` then
    turns token authentication on)."""
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return True
    home = env.get("HOME") or str(Path.home())
    return Path(env.get("RAY_AUTH_TOKEN_PATH") or Path(home) / ".ray" / "auth_token").is_file()


def enable_ray_token_auth() -> bool:
    """Token authentication for this process when ``RAY_AUTH_MODE`` is unset and a token is
    available: what Ray does itself for a cluster it finds on this machine, and what a
    cluster started with that token (``ray start --head`` turns it on when it finds one)
    needs. A cluster without authentication still accepts such a client. Returns whether
    it was turned on here."""
    if os.environ.get("RAY_AUTH_MODE") is not None or not ray_token_available():
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # Ray reads its configuration once, on import: read it again (what Ray does itself)
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):
        pass
    return True


def connect(address: str | None):
    """Connect to the cluster (``local`` starts a private one in this process)."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    if address != "local":
        enable_ray_token_auth()
    auth = getattr(ray.exceptions, "AuthenticationError", ())  # () catches nothing
    try:
        if address == "local":
            ray.init(log_to_driver=False, include_dashboard=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except auth as exc:
        raise MoshikitError(f"the Ray cluster at {address} refused this machine's authentication "
                            f"({str(exc).split('.')[0][:160]})", hint=RAY_TOKEN_HINT) from None
    except ConnectionError as exc:
        hint = ("start one with `ray start --head` (then `ray start --address HEAD:6379` on each worker), pass "
                "--ray-address HOST:PORT, or --ray-address local")
        if address == "auto":
            raise MoshikitError("no running Ray cluster found from this machine", hint=hint) from None
        why = str(exc).splitlines()[0][:160]
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            raise MoshikitError(f"no Ray cluster at {address} ({why})", hint=hint) from None
        # Ray says the same whether nothing listens there or the cluster refused a client
        # without its token (its own log lines show which): name both.
        raise MoshikitError(f"cannot connect to the Ray cluster at {address} ({why})",
                            hint=f"{RAY_TOKEN_HINT}; if no cluster runs there, {hint}") from None
    return ray
