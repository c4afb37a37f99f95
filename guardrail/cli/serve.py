"""``guardrail serve`` (the gateway) and ``guardrail dashboard`` (the dashboard on its own,
over a ledger and, optionally, the live store). Both need the ``server`` extra."""

from __future__ import annotations

import os

import click

from guardrail.cli.render import CliError
from guardrail.errors import ConfigurationError

__all__ = ["dashboard", "serve"]


@click.command()
@click.option(
    "--config", "config_path", required=True, metavar="FILE", help="the gateway's TOML config"
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True)
def serve(config_path: str, host: str, port: int, workers: int) -> int:
    """Run the gateway (needs the [server] extra)."""
    from guardrail.server.serve import serve as run

    run(config_path, host=host, port=port, workers=workers)
    return 0


@click.command()
@click.option(
    "--ledger",
    "ledger_url",
    required=True,
    envvar="GUARDRAIL_LEDGER",
    metavar="URL",
    help="sqlite:///path.db or postgresql://... (or $GUARDRAIL_LEDGER)",
)
@click.option(
    "--store",
    "store_url",
    envvar="GUARDRAIL_STORE",
    metavar="URL",
    help="the live store (redis://...): today's spend and holds as the caps see them",
)
@click.option("--prefix", default="guardrail", show_default=True, help="the store's key prefix")
@click.option("--timezone", default="UTC", show_default=True, help="the store's time zone")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8090, show_default=True)
@click.option(
    "--admin-key-env",
    metavar="VAR",
    help="require the key in this environment variable (Basic auth or a bearer token)",
)
def dashboard(
    ledger_url: str,
    store_url: str | None,
    prefix: str,
    timezone: str,
    host: str,
    port: int,
    admin_key_env: str | None,
) -> int:
    """Serve the dashboard over a ledger (needs the [server] extra)."""
    try:
        import uvicorn
    except ImportError:
        raise CliError(
            "guardrail dashboard needs the server extra: pip install 'guardrail-limits[server]'"
        ) from None
    from guardrail.dashboard.app import DashboardSource, dashboard_app
    from guardrail.stores.urls import open_store

    admin_key = None
    if admin_key_env is not None:
        admin_key = os.environ.get(admin_key_env)
        if not admin_key:
            raise CliError(f"--admin-key-env {admin_key_env}: that variable is not set", 2)
    elif host not in ("127.0.0.1", "localhost", "::1"):
        raise CliError(
            f"--host {host} serves the dashboard to other machines: give --admin-key-env too", 2
        )
    try:
        store = open_store(store_url, prefix=prefix, timezone=timezone) if store_url else None
        source = DashboardSource(ledger_url, store, timezone=timezone)
    except ConfigurationError as exc:
        raise CliError(str(exc), status=2) from None
    click.echo(f"guardrail dashboard on http://{host}:{port}/", err=True)
    uvicorn.run(
        dashboard_app(source, admin_key=admin_key, hosts=(host,)),
        host=host,
        port=port,
        log_level="warning",
    )
    return 0
