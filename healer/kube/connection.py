"""The connection to one cluster's API server: kubeconfig loading, one request, and the typed
error for an answer the caller did not expect. The other modules of :mod:`healer.kube` build
on :class:`Connection`."""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import aiohttp
import yaml
from kubernetes_asyncio.client import (
    ApiClient,
    Configuration,
    CoordinationV1Api,
    CoreV1Api,
    RbacAuthorizationV1Api,
    rest,
)
from kubernetes_asyncio.client.exceptions import OpenApiException
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config

from healer.clock import Clock, RealClock
from healer.errors import ConfigError, KubeUnavailable, PermanentError
from healer.suggest import did_you_mean


@dataclass(frozen=True)
class Answer:
    """One answer of the API server, not yet judged."""

    status: int
    body: Any  # decoded JSON, or the text when the server did not send JSON
    retry_after: float | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        if isinstance(self.body, dict):
            return str(self.body.get("message") or self.body.get("reason") or "")
        return str(self.body)[:200]


async def load_configuration(path: Path | None, context: str | None = None) -> Configuration:
    """The client configuration from a kubeconfig. ``path=None`` follows the default loading
    rules: ``$KUBECONFIG``, else ``~/.kube/config``, else the in-cluster service account."""
    config = Configuration()
    where = str(path) if path is not None else _default_kubeconfig()
    if where is not None and os.pathsep not in where:  # several files: the client merges them
        problem = kubeconfig_problem(Path(where), context)
        if problem is not None:
            unset = (
                ""
                if path is not None
                else " (the cluster names none: $KUBECONFIG, else ~/.kube/config)"
            )
            raise ConfigError(f"kubeconfig {where}{unset}: {problem}")
    try:
        if where is None:
            where = "in-cluster service account"
            load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
        else:
            await load_kube_config(
                config_file=where,
                context=context,
                client_configuration=config,
                persist_config=False,
            )
    except (ConfigException, OSError, ValueError) as exc:
        raise ConfigError(f"kubeconfig {where}: {exc}") from exc
    return config


def api_client(config: Configuration) -> ApiClient:
    """The generated client over ``config`` without the TLS set-up the library repeats per
    client: none for a plain-HTTP server, else one context shared by every client with the
    same CA, client certificate and verification flags (each costs milliseconds to tens of
    them, the system store's: at 100 clusters that was seconds before the daemon started)."""
    return _ApiClient(config, _tls_for(config))


_TLS: dict[tuple[object, ...], ssl.SSLContext] = {}


def _tls_for(config: Configuration) -> ssl.SSLContext | bool:
    """The TLS context for ``config``'s server, built as kubernetes_asyncio builds it (client
    /rest.py), once per distinct content; ``True`` (aiohttp's default) for plain HTTP."""
    if str(config.host).lower().startswith("http://"):
        return True
    files = (config.ssl_ca_cert, config.cert_file, config.key_file)
    try:
        key = (
            *(Path(f).read_bytes() if f else None for f in files),
            bool(config.verify_ssl),
            bool(config.disable_strict_ssl_verification),
        )
        if key not in _TLS:
            context = ssl.create_default_context(cafile=config.ssl_ca_cert)
            if config.cert_file:
                context.load_cert_chain(config.cert_file, keyfile=config.key_file)
            if not config.verify_ssl:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if config.disable_strict_ssl_verification:
                context.verify_flags &= ~ssl.VERIFY_X509_STRICT
            _TLS[key] = context
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"kubeconfig for {config.host}: TLS files: {exc}") from exc
    return _TLS[key]


class _RestClient(rest.RESTClientObject):
    """The library's REST client over a given TLS context instead of a new one each."""

    def __init__(self, configuration: Configuration, tls: ssl.SSLContext | bool) -> None:
        # RESTClientObject.__init__ without its ssl.create_default_context (tests/
        # test_kube_adapter.py checks these stay the attributes the library sets; its type
        # stubs say str where the library keeps None).
        self.server_hostname = configuration.tls_server_name  # type: ignore[assignment]
        self.proxy = configuration.proxy  # type: ignore[assignment]
        self.proxy_headers = configuration.proxy_headers  # type: ignore[assignment]
        connector = aiohttp.TCPConnector(limit=configuration.connection_pool_maxsize, ssl=tls)
        # read_bufsize as the library's: a watch event may carry a large object.
        self.pool_manager = aiohttp.ClientSession(
            connector=connector, trust_env=True, read_bufsize=2**21
        )


class _ApiClient(ApiClient):
    def __init__(self, configuration: Configuration, tls: ssl.SSLContext | bool) -> None:
        # ApiClient.__init__ with _RestClient in place of the REST client it would build.
        self.configuration = configuration
        self.pool_threads = 1
        self.rest_client = _RestClient(configuration, tls)
        self.default_headers = {}
        self.cookie = None  # type: ignore[assignment]
        self.user_agent = "healer"
        self.client_side_validation = configuration.client_side_validation


def kubeconfig_problem(path: Path, context: str | None) -> str | None:
    """Why the kubeconfig a cluster would use cannot serve, or None: it is missing, not a
    kubeconfig, or names no (such) context: said before the client library would say it less
    clearly ("Expected key current-context", with a log line of its own)."""
    try:
        # libyaml's loader when built with it: 10x the pure-Python one, once per cluster.
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    except yaml.YAMLError:
        return "not valid YAML"
    if not isinstance(data, dict) or not isinstance(data.get("contexts") or [], list):
        return "not a kubeconfig (no list of contexts)"
    names = [str(c.get("name")) for c in data.get("contexts") or [] if isinstance(c, dict)]
    wanted = context or data.get("current-context")
    if not wanted:
        return (
            "no current-context: set one (kubectl config use-context) or name one in the "
            f"cluster's context field (contexts: "
            f"{', '.join(names) or 'none'})"
        )
    if wanted not in names:
        return f"no context {wanted!r}{did_you_mean(str(wanted), names)}"
    return None


class Connection:
    """One cluster's API server: the generated API groups, the clock, and the plumbing every
    operation shares. Use as ``async with`` or call :meth:`close`."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        clock: Clock | None = None,
        request_timeout: float = 30.0,
    ) -> None:
        self._api = api_client
        self._core = CoreV1Api(api_client)
        self._coordination = CoordinationV1Api(api_client)
        self._rbac = RbacAuthorizationV1Api(api_client)
        self._clock: Clock = clock if clock is not None else RealClock()
        self._request_timeout = request_timeout

    async def close(self) -> None:
        await self._api.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def host(self) -> str:
        return str(self._api.configuration.host)

    # -------------------------------------------------------------- plumbing

    async def _call(
        self, what: str, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> Answer:
        kwargs.setdefault("_request_timeout", self._request_timeout)
        try:
            response = await method(*args, _preload_content=False, **kwargs)
            try:
                data = await response.read()
            finally:
                response.release()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise KubeUnavailable(
                f"{what}: cannot reach the Kubernetes API at {self.host}: "
                f"{exc or type(exc).__name__}"
            ) from exc
        except OpenApiException as exc:
            raise PermanentError(f"{what}: the request could not be built: {exc}") from exc
        return Answer(response.status, _decode(data), _retry_after(response.headers))

    def _fail(self, what: str, answer: Answer) -> None:
        """Raise the typed error for an answer the caller did not expect."""
        if answer.status >= 500 or answer.status == 429:
            raise KubeUnavailable(
                f"{what}: the Kubernetes API at {self.host} answered {answer.status}: "
                f"{answer.message}",
                delay=answer.retry_after,
            )
        raise PermanentError(
            f"{what}: the Kubernetes API answered {answer.status}: {answer.message}"
        )

    def _expect(self, what: str, answer: Answer) -> Any:
        if not answer.ok:
            self._fail(what, answer)
        return answer.body


def _default_kubeconfig() -> str | None:
    """Where the default loading rules find a kubeconfig; None means use the in-cluster
    service account (no $KUBECONFIG, no ~/.kube/config, and running in a pod)."""
    explicit = os.environ.get("KUBECONFIG")
    if explicit:
        return explicit
    home = Path.home() / ".kube" / "config"
    if not home.exists() and "KUBERNETES_SERVICE_HOST" in os.environ:
        return None
    return str(home)


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data) if data else {}
    except ValueError:
        return data.decode("utf-8", errors="replace")


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
