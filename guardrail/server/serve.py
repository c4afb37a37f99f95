"""Running the gateway: ``guardrail serve --config guardrail.toml [--host] [--port] [--workers]``.

With several workers, uvicorn starts each one from :func:`app_from_environment` (the config
path travels in ``GUARDRAIL_CONFIG``); budgets are shared through the store, so a
``memory://`` store is refused with more than one worker.
"""

from __future__ import annotations

import os

from guardrail.errors import ConfigurationError
from guardrail.server.config import GatewayConfig, load_config

__all__ = ["app_from_environment", "check_workers", "serve"]

CONFIG_VARIABLE = "GUARDRAIL_CONFIG"


def check_workers(config: GatewayConfig, workers: int) -> None:
    if workers < 1:
        raise ConfigurationError(f"--workers must be at least 1, got {workers}")
    if workers > 1 and config.store.startswith("memory://"):
        raise ConfigurationError(
            f"store: memory:// keeps budgets in one process, so {workers} workers would each "
            "have their own: use a redis:// store (or --workers 1)"
        )


def app_from_environment() -> object:
    """The app of the config in ``GUARDRAIL_CONFIG`` (uvicorn's factory for each worker)."""
    from guardrail.server.app import create_app

    return create_app(load_config(os.environ[CONFIG_VARIABLE]))


def serve(config_path: str, *, host: str = "127.0.0.1", port: int = 8080, workers: int = 1) -> None:
    """Check the config, then run the gateway under uvicorn until it is stopped (SIGTERM
    or Ctrl-C: in-flight calls, streams included, are finished and settled first)."""
    config = load_config(config_path)
    check_workers(config, workers)
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - the [server] extra is missing
        raise ConfigurationError(
            "guardrail serve needs the server extra: pip install 'guardrail-limits[server]'"
        ) from exc
    os.environ[CONFIG_VARIABLE] = os.path.abspath(config_path)
    uvicorn.run(
        "guardrail.server.serve:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,  # at log level warning its lines are dropped anyway: skip building them
        timeout_graceful_shutdown=30,
    )
