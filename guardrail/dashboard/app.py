"""Serving the dashboard: :class:`DashboardSource` (the ledger connection and the store a
page is built from, shared by the gateway's ``/dashboard`` and the standalone app) and
:func:`dashboard_app`, the standalone Starlette app behind ``guardrail dashboard``.

The admin key is presented as a bearer token (``Authorization: Bearer ...``) or, from a
browser, with HTTP Basic authentication (any user name, the key as the password): a
request without it gets a 401 that makes the browser ask.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any
from zoneinfo import ZoneInfo

from guardrail.dashboard.data import collect
from guardrail.dashboard.page import CONTENT_SECURITY_POLICY, render
from guardrail.errors import ConfigurationError
from guardrail.ledger.database import Database, DatabaseError, check_url, connect
from guardrail.ledger.schema import migrate
from guardrail.stores.base import Store

__all__ = ["DashboardSource", "admin_key_matches", "dashboard_app", "presented_key"]

HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
}
CHALLENGE = {"www-authenticate": 'Basic realm="guardrail dashboard", charset="UTF-8"'}


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key in a bearer token or in HTTP Basic credentials (its password, or its user
    name when the password is empty)."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            user, _, password = (
                base64.b64decode(value.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return None
        return password or user or None
    return None


def admin_key_matches(headers: Mapping[str, str], admin_key: str | None) -> bool:
    """Whether the request presents ``admin_key`` (compared in constant time)."""
    key = presented_key(headers)
    return bool(admin_key and key and hmac.compare_digest(key.encode(), admin_key.encode()))


class DashboardSource:
    """Builds the page from one ledger connection (opened on first use, reopened after a
    failure) and, when given, the live store."""

    def __init__(
        self,
        ledger_url: str,
        store: Store | None = None,
        *,
        timezone: str = "UTC",
        title: str = "guardrail",
    ) -> None:
        check_url(ledger_url)
        try:
            ZoneInfo(timezone)
        except (KeyError, ValueError):
            raise ConfigurationError(f"unknown time zone {timezone!r}") from None
        self.ledger_url, self.store, self.timezone, self.title = ledger_url, store, timezone, title
        self._db: Database | None = None
        self._lock = threading.Lock()

    def page(self) -> str:
        """The page as of now (blocking: run it in a thread from async code)."""
        with self._lock:
            try:
                if self._db is None:
                    self._db = connect(self.ledger_url, timeout_seconds=5.0)
                    migrate(self._db)
                return render(
                    collect(self._db, self.store, timezone=self.timezone), title=self.title
                )
            except DatabaseError:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                raise

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


def dashboard_app(
    source: DashboardSource, *, admin_key: str | None = None, hosts: tuple[str, ...] = ()
) -> Any:
    """The standalone app: the page at ``/`` and ``/dashboard``, behind ``admin_key`` when
    one is given. Without a key it answers only requests addressed to this machine's own
    names (and ``hosts``): a web page elsewhere cannot read it by pointing a DNS name of
    its own at 127.0.0.1. Needs the ``server`` extra (Starlette)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, PlainTextResponse, Response
    from starlette.routing import Route

    async def page(request: Request) -> Response:
        if admin_key is not None and not admin_key_matches(request.headers, admin_key):
            return PlainTextResponse("this needs the admin key", 401, headers=CHALLENGE)
        try:
            html = await run_in_threadpool(source.page)
        except DatabaseError as exc:
            return PlainTextResponse(f"the ledger is not answering: {exc}", 503)
        return HTMLResponse(html, headers=HEADERS)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        source.close()

    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    middleware = []
    if admin_key is None:
        allowed = [*LOCAL_HOSTS, *hosts]
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed))
    return Starlette(
        middleware=middleware,
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/dashboard", page, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
