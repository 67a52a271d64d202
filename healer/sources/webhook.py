"""The alert webhook: an aiohttp server that turns alert notifications into :class:`NodeEvent`.

Owns the HTTP side: the listener (TLS when given a certificate and key; its connections capped
and timed out by :mod:`healer.sources.webhook_conn`), authentication (bearer token and/or an
HMAC-SHA256 signature with a timestamp and a replay cache kept in the state database, so a replay
is refused after a restart too), the body size and time limits, and counting. What a body means
is decided in :mod:`healer.sources.webhook_payload`. ``/healthz`` and ``/metrics`` are never
served here: they have their own listener (:mod:`healer.telemetry.server`).

A request is checked in this order, cheapest first, so an unauthenticated caller never gets the
server to buffer a large body:

1. ``Content-Length`` over ``maxBody`` -> 413 (nothing is read);
2. bearer token (when configured) -> 401;
3. the body is read, stopping with 413 as soon as it passes ``maxBody`` (chunked uploads too)
   and with 408 when it is not all there within ``bodyTimeout``;
4. HMAC signature (when configured) -> 401: ``X-Healer-Timestamp`` (Unix seconds) must be within
   ``maxSkew`` of now and ``X-Healer-Signature: sha256=<hex>`` must be
   ``HMAC-SHA256(secret, "<timestamp>." + body)``; a signature already seen within the skew
   window is a replay -> 401 ``replayed``;
5. the body is parsed -> 400/404/422, or accepted -> 200 with a JSON summary.

Secrets (``SecretRef``) are read once when the server is built and again on
:meth:`WebhookServer.reload_secrets` (the daemon's SIGHUP reload), never per request: a rotated
token file takes effect on ``systemctl reload healer``. If a secret cannot be read, requests are
answered 503 and the error logged, and each request tries the read again until one succeeds (so
restoring the file is enough).
Every refused request and every refused alert is counted in ``healer_events_rejected_total``
with ``source="webhook"`` and logged (``webhook.rejected``, ``webhook.alert_rejected``); every
event passed on is counted in ``healer_events_received_total``, and an accepted request is
logged at debug level only (``webhook.received``): at INFO a flood of alerts would be a flood
of log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import resource
import ssl
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, NoReturn, Protocol

import structlog
from aiohttp import web

from healer.clock import Clock
from healer.config import WebhookConfig
from healer.errors import ConfigError, StateUnwritable
from healer.model import BlockChange, NodeEvent
from healer.sources.webhook_conn import ConnectionGuard, connection_cap
from healer.sources.webhook_payload import (
    BODY_TIMEOUT,
    REPLAYED,
    SOURCE,
    TOO_LARGE,
    UNAUTHORIZED,
    AlertRules,
    Parsed,
    Rejection,
    parse_alertmanager,
    parse_generic,
)
from healer.telemetry.logs import enabled_for
from healer.telemetry.metrics import EVENTS_RECEIVED, EVENTS_REJECTED
from healer.telemetry.server import serve_until_cancelled

log = structlog.get_logger(__name__)

Emit = Callable[[NodeEvent], Awaitable[None]]
OnBlock = Callable[[BlockChange], Awaitable[None]]

TIMESTAMP_HEADER: Final = "X-Healer-Timestamp"
SIGNATURE_HEADER: Final = "X-Healer-Signature"
_CHUNK: Final = 65536
_LOG_MAX: Final = 200
_RECEIVED: Final = EVENTS_RECEIVED.labels(source=SOURCE)
ALERTMANAGER_PATH: Final = "/v1/alertmanager"
GENERIC_PATH: Final = "/v1/events"


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Healer-Signature`` value for ``body`` sent at ``timestamp``: ``sha256=<hex>``."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class SignatureStore(Protocol):
    """Where the replay cache outlives the process (the state database, healer.store)."""

    def remember_signature(self, signature: str, *, now: float, expires_at: float) -> bool: ...

    def signatures(self, now: float) -> dict[str, float]: ...


class ReplayCache:
    """Signatures seen within the skew window. A signed request is valid for ``max_skew`` either
    side of its timestamp, so remembering each signature for ``2 * max_skew`` covers the whole
    time it could be replayed; older ones fail the skew check anyway.

    With a ``store`` every signature is also written there (with its expiry, in wall-clock
    seconds like the signed timestamps) before the request is accepted, and the live ones are
    loaded back at start: a replay after a restart is refused too."""

    def __init__(
        self,
        max_skew: float,
        *,
        limit: int = 100_000,
        store: SignatureStore | None = None,
        now: float | None = None,
    ) -> None:
        self._ttl = 2 * max_skew
        self._limit = limit
        self._store = store
        # signature -> forget after
        self._seen: dict[str, float] = {} if store is None or now is None else store.signatures(now)

    def seen(self, signature: str, now: float) -> bool:
        """True if ``signature`` was already used; records it otherwise."""
        if len(self._seen) >= self._limit or len(self._seen) % 256 == 0:
            self._purge(now)
        if signature in self._seen and self._seen[signature] > now:
            return True
        if len(self._seen) >= self._limit:
            # Full of live entries: refusing is safer than forgetting one (a replay would pass).
            return True
        expires = now + self._ttl
        if self._store is not None and not self._store.remember_signature(
            signature, now=now, expires_at=expires
        ):
            return True  # seen by an earlier process (or another daemon on this state)
        self._seen[signature] = expires
        return False

    def _purge(self, now: float) -> None:
        self._seen = {s: t for s, t in self._seen.items() if t > now}


def check_signature(
    *,
    secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    max_skew: float,
    replays: ReplayCache,
) -> Rejection | None:
    """None when the request is signed, fresh and new; otherwise why not."""
    if not timestamp or not signature:
        return Rejection(UNAUTHORIZED, f"{TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required")
    try:
        sent = float(timestamp)
    except ValueError:
        return Rejection(UNAUTHORIZED, f"{TIMESTAMP_HEADER} is not a number of seconds")
    if not math.isfinite(sent) or abs(now - sent) > max_skew:
        return Rejection(
            UNAUTHORIZED,
            f"{TIMESTAMP_HEADER} is more than {max_skew:.0f}s away from the server's clock",
        )
    expected = sign(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        return Rejection(UNAUTHORIZED, "the signature does not match the body")
    # Only a valid signature is remembered: junk must not be able to fill the cache.
    if replays.seen(expected, now):
        return Rejection(REPLAYED, "this signed request was already received")
    return None


def count_rejection(rejection: Rejection) -> None:
    """Count one refused request or alert in ``healer_events_rejected_total``."""
    EVENTS_REJECTED.labels(source=SOURCE, reason=rejection.reason).inc()


def count_accepted(parsed: Parsed) -> None:
    """Count what an accepted request brought: its events and block changes as received, its
    left-out alerts as rejected. The server calls this for every accepted request."""
    for _, rejection in parsed.rejections:
        count_rejection(rejection)
    _RECEIVED.inc(len(parsed.events) + len(parsed.blocks))


def check_bearer(header: str | None, token: str | bytes) -> bool:
    """Whether ``Authorization: Bearer <token>`` carries ``token`` (compared in constant time)."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    expected = token.encode() if isinstance(token, str) else token
    return hmac.compare_digest(given.strip().encode(), expected)


@dataclass(frozen=True)
class _Secrets:
    """The webhook's credentials as last read: the bearer token (UTF-8) and the HMAC secret."""

    token: bytes | None
    hmac_secret: str | None


class WebhookServer:
    """Serve the webhook on ``listen``: connections capped (``maxConnections``, lowered to fit
    the open-file limit, see :func:`connection_cap`), headers and bodies timed out.

    ``run()`` serves until cancelled. ``app()`` gives the aiohttp application for tests.
    Like the events (``emit``), every blocking alert's change (firing or resolved) goes on the
    daemon's event path: ``on_block`` is awaited for each, in the order of the notification.
    Whether it starts or lifts a block is the planner's to decide (its ``AlertBlocks``); a
    source keeps no block state.
    """

    def __init__(
        self,
        *,
        config: WebhookConfig,
        known_clusters: Collection[str],
        clock: Clock,
        emit: Emit,
        is_known_node: Callable[[str, str], bool] | None = None,
        on_block: OnBlock | None = None,
        replay_store: SignatureStore | None = None,
    ) -> None:
        self._config = config
        self._known = frozenset(known_clusters)
        self._clock = clock
        self._emit = emit
        self._is_known_node = is_known_node
        self._on_block = on_block
        self._replays = ReplayCache(config.max_skew, store=replay_store, now=clock.wall())
        self.guard = ConnectionGuard(
            cap=connection_cap(config.max_connections, _soft_nofile()),
            header_timeout=config.header_timeout,
            max_requests=config.max_requests_per_connection,
            handshake_timeout=config.header_timeout,
        )
        self._rules = AlertRules(
            node_labels=config.node_labels,
            cluster_label=config.cluster_label,
            conditions=dict(config.conditions),
            blocking_alerts=frozenset(config.blocking_alerts),
        )
        self._generic_conditions = frozenset(self._rules.conditions.values())
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self.addresses: list[tuple[str, int]] = []
        self._secrets: _Secrets | None = None
        self.reload_secrets()

    def reload_secrets(self) -> bool:
        """Read the token and the HMAC secret (``SecretRef``) again: called once when the server
        is built and by the daemon on every reload (SIGHUP), so a rotated file takes effect
        without a restart and no request pays for a file read. False (and logged) when one
        cannot be read: requests are then answered 503 until a read succeeds."""
        cfg = self._config
        try:
            token = cfg.token.reveal() if cfg.token is not None else None
            secret = cfg.hmac_secret.reveal() if cfg.hmac_secret is not None else None
        except ConfigError as exc:
            self._secrets = None
            log.error("webhook.secret_unavailable", error=str(exc))
            return False
        self._secrets = _Secrets(
            token=token.encode() if token is not None else None, hmac_secret=secret
        )
        return True

    # -- applications ---------------------------------------------------------------------

    def app(self) -> web.Application:
        # aiohttp's own limit backs ours up; our streaming read answers 413 before it. No
        # middleware: aiohttp wraps every request of an application that has one in two more
        # coroutines, and what ours did (count the request on its connection, close it with a
        # refusal) each handler does itself.
        app = web.Application(client_max_size=self._config.max_body + 1)
        app.router.add_post(ALERTMANAGER_PATH, self._alertmanager)
        app.router.add_post(ALERTMANAGER_PATH + "/{cluster}", self._alertmanager)
        app.router.add_post(GENERIC_PATH, self._generic)
        # Last, so it only gets what no route above took: another path, or another method.
        app.router.add_route("*", "/{path:.*}", self._not_served)
        return app

    async def _not_served(self, request: web.Request) -> web.Response:
        """A path or method the webhook does not serve: 405 (with ``Allow``) for one of its
        paths, 404 for any other, and the connection is closed with the answer (whoever
        asks is not one of the webhook's callers)."""
        self.guard.request_started(request.transport)
        path = request.path
        cluster = path.removeprefix(ALERTMANAGER_PATH + "/") if path != ALERTMANAGER_PATH else ""
        ours = path in (ALERTMANAGER_PATH, GENERIC_PATH) or (
            cluster != path and cluster != "" and "/" not in cluster
        )
        if ours and request.method != "POST":
            resp = web.json_response(
                {"error": "Method Not Allowed"}, status=405, headers={"Allow": "POST"}
            )
        else:
            resp = web.json_response({"error": "Not Found"}, status=404)
        resp.force_close()
        return resp

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self._config
        ssl_ctx = self._ssl_context()
        # aiohttp arms its keep-alive timer when a connection is made and after each response,
        # and closes the connection if no whole request head has come by then: one setting
        # bounds both slow headers (slowloris) and idle keep-alive connections.
        runner = web.AppRunner(
            self.app(),
            access_log=None,
            shutdown_timeout=2.0,
            keepalive_timeout=cfg.header_timeout,
            lingering_time=min(2.0, cfg.body_timeout),
        )
        await runner.setup()
        self._runner = runner
        loop = asyncio.get_running_loop()
        host, port = cfg.listen
        try:
            self._server = await loop.create_server(
                self.guard.factory(runner.server),  # type: ignore[arg-type]
                host,
                port,
                ssl=ssl_ctx,
                ssl_handshake_timeout=cfg.header_timeout if ssl_ctx is not None else None,
                backlog=128,
                reuse_address=True,
            )
        except OSError as exc:
            await self.stop()
            raise OSError(
                exc.errno, f"webhook.listen {host}:{port}: cannot listen: {exc.strerror}"
            ) from exc
        for sock in self._server.sockets:
            name = sock.getsockname()
            bound = (str(name[0]), int(name[1]))
            self.addresses.append(bound)
            log.info(
                "webhook.listening",
                host=bound[0],
                port=bound[1],
                tls=ssl_ctx is not None,
                max_connections=self.guard.cap,
            )

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.cleanup()  # closes the open connections (aiohttp's shutdown)
        self.guard.shed_log.flush()
        self.addresses = []

    async def run(self) -> NoReturn:
        await serve_until_cancelled(self.start, self.stop)

    def _ssl_context(self) -> ssl.SSLContext | None:
        cfg = self._config
        if cfg.tls_cert is None or cfg.tls_key is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"webhook: cannot load tlsCert {cfg.tls_cert} / tlsKey {cfg.tls_key}: {exc}"
            ) from exc
        return ctx

    # -- handlers ------------------------------------------------------------------------------

    async def _alertmanager(self, request: web.Request) -> web.Response:
        path_cluster = request.match_info.get("cluster")

        def parse(body: bytes) -> Parsed | Rejection:
            return parse_alertmanager(
                body,
                path_cluster=path_cluster,
                rules=self._rules,
                known_clusters=self._known,
                now=self._clock.now(),
                max_body=self._config.max_body,
                is_known_node=self._is_known_node,
                timeline=self._clock.from_wall,  # startsAt is the sender's wall clock
            )

        return await self._ingest(request, "alertmanager", parse)

    async def _generic(self, request: web.Request) -> web.Response:
        def parse(body: bytes) -> Parsed | Rejection:
            return parse_generic(
                body,
                known_clusters=self._known,
                now=self._clock.now(),
                max_body=self._config.max_body,
                is_known_node=self._is_known_node,
                conditions=self._generic_conditions,
            )

        return await self._ingest(request, "generic", parse)

    async def _ingest(
        self, request: web.Request, kind: str, parse: Callable[[bytes], Parsed | Rejection]
    ) -> web.Response:
        """Answer one request, and close its connection once it has had
        ``maxRequestsPerConnection`` of them."""
        again = self.guard.request_started(request.transport)
        resp = await self._answer(request, kind, parse)
        if not again:
            resp.force_close()
        return resp

    async def _answer(
        self, request: web.Request, kind: str, parse: Callable[[bytes], Parsed | Rejection]
    ) -> web.Response:
        cfg = self._config
        length = request.content_length
        if length is not None and length > cfg.max_body:
            return self._refuse(
                request,
                kind,
                Rejection(TOO_LARGE, f"body is {length} bytes; the limit is {cfg.max_body}"),
            )
        secrets = self._secrets
        if secrets is None and self.reload_secrets():
            secrets = self._secrets
        if secrets is None:
            return web.json_response(
                {
                    "error": "credentials_unavailable",
                    "message": "the server cannot read its secret",
                },
                status=503,
            )
        token, secret = secrets.token, secrets.hmac_secret
        if token is not None and not check_bearer(request.headers.get("Authorization"), token):
            return self._refuse(
                request, kind, Rejection(UNAUTHORIZED, "a valid bearer token is required")
            )
        try:
            body = await _read_body(request, cfg.max_body, cfg.body_timeout)
        except TimeoutError:
            self.guard.shed_log.shed(BODY_TIMEOUT)
            return self._refuse(
                request,
                kind,
                Rejection(BODY_TIMEOUT, f"the body did not arrive within {cfg.body_timeout:g}s"),
            )
        if body is None:
            return self._refuse(
                request,
                kind,
                Rejection(TOO_LARGE, f"body is over the limit of {cfg.max_body} bytes"),
            )
        if secret is not None:
            try:
                bad = check_signature(
                    secret=secret,
                    timestamp=request.headers.get(TIMESTAMP_HEADER),
                    signature=request.headers.get(SIGNATURE_HEADER),
                    body=body,
                    now=self._clock.wall(),  # the sender signs with its wall clock
                    max_skew=cfg.max_skew,
                    replays=self._replays,
                )
            except StateUnwritable as exc:  # a replay cannot be ruled out: the sender retries
                log.error("webhook.replay_cache_unavailable", error=str(exc)[:_LOG_MAX])
                return web.json_response(
                    {
                        "error": "replay_cache_unavailable",
                        "message": "the server cannot record the signature; retry later",
                    },
                    status=503,
                )
            if bad is not None:
                return self._refuse(request, kind, bad)
        result = parse(body)
        if isinstance(result, Rejection):
            return self._refuse(request, kind, result)
        return await self._accept(request, kind, result)

    async def _accept(self, request: web.Request, kind: str, parsed: Parsed) -> web.Response:
        count_accepted(parsed)
        for index, rejection in parsed.rejections:
            log.warning(
                "webhook.alert_rejected",
                format=kind,
                alert=index,
                reason=rejection.reason,
                error=rejection.message,
                **_about(rejection),
            )
        blocked: list[str] = []
        for change in parsed.blocks:
            if self._on_block is not None:
                await self._on_block(change)
            blocked.append(
                f"{change.cluster}/{change.alert}={'firing' if change.firing else 'resolved'}"
            )
        for event in parsed.events:  # each 'since' already on our timeline (the parser's)
            await self._emit(event)
        if enabled_for(logging.DEBUG):  # not bound and dropped per request at INFO
            log.debug(
                "webhook.received",
                format=kind,
                events=len(parsed.events),
                blocks=len(parsed.blocks),
                rejected=len(parsed.rejections),
            )
        if not blocked and not parsed.rejections:
            return web.Response(
                body=_accepted_body(len(parsed.events)),
                content_type="application/json",
                charset="utf-8",
            )
        return web.json_response(
            {
                "accepted": len(parsed.events),
                "blocks": blocked,
                "rejected": [
                    {"alert": index, "reason": r.reason, "message": r.message}
                    for index, r in parsed.rejections
                ],
            }
        )

    def _refuse(self, request: web.Request, kind: str, rejection: Rejection) -> web.Response:
        count_rejection(rejection)
        log.warning(
            "webhook.rejected",
            format=kind,
            reason=rejection.reason,
            status=rejection.status,
            error=rejection.message[:_LOG_MAX],
            remote=request.remote,
            **_about(rejection),
        )
        headers: dict[str, Any] = {}
        if rejection.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="healer"'
        resp = web.json_response(
            {"error": rejection.reason, "message": rejection.message},
            status=rejection.status,
            headers=headers,
        )
        if rejection.reason in (TOO_LARGE, BODY_TIMEOUT, UNAUTHORIZED, REPLAYED):
            # The rest of the body was not read, or the caller is not one of ours: the
            # connection is not kept for another request.
            resp.force_close()
        return resp


async def _read_body(request: web.Request, limit: int, timeout: float) -> bytes | None:
    """The whole body, or None when it is longer than ``limit`` bytes; TimeoutError when it is
    not all there within ``timeout`` seconds."""
    content = request.content
    if content.is_eof():
        # All here already (a small body comes with its head): nothing to wait for.
        body = content.read_nowait()
        return body if len(body) <= limit else None
    async with asyncio.timeout(timeout):
        return await _read_limited(request, limit)


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None as soon as it is longer than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


@lru_cache(maxsize=256)
def _accepted_body(accepted: int) -> bytes:
    """The answer to a request whose alerts were all taken, with no block changes: the same
    bytes ``json_response`` would send, made once per count."""
    return json.dumps({"accepted": accepted, "blocks": [], "rejected": []}).encode()


def _soft_nofile() -> int | None:
    """The soft open-file limit, None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def _about(rejection: Rejection) -> dict[str, str]:
    """The node and condition a refused condition was about, with the source, for the log."""
    fields = {
        "cluster": rejection.cluster,
        "node": rejection.node,
        "condition": rejection.condition,
    }
    about = {k: v for k, v in fields.items() if v is not None}
    return {**about, "source": SOURCE} if about else {}
