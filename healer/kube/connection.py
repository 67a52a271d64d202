"""The connection to one cluster's API server: kubeconfig loading, one request, and the typed
error for an answer the caller did not expect. The other modules of :mod:`healer.kube` build
on :class:`Connection`."""

from __future__ import annotations

import json
import os
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


def kubeconfig_problem(path: Path, context: str | None) -> str | None:
    """Why the kubeconfig a cluster would use cannot serve, or None: it is missing, not a
    kubeconfig, or names no (such) context: said before the client library would say it less
    clearly ("Expected key current-context", with a log line of its own)."""
    try:
        data = yaml.safe_load(path.read_text())
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
