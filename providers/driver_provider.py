r"""A :class:`~healer.cloud.machines.Provider` over any libcloud ``NodeDriver``, plus the error mapping.

Both shipped plugins (``lab`` and ``libcloud``) are this class with a different driver and
dialect. It owns the parts every cloud shares:

- libcloud is blocking, so every call runs in a small bounded thread pool, each thread borrowing a
  driver object from a pool (libcloud connections are not safe to share between threads);
- the safety rules of the contract: create is idempotent by name, destroy re-reads the machine by
  id and refuses when its name or tags changed, and never terminates a machine twice;
- mapping libcloud's exceptions onto healer's typed errors: temporary ones (network, 5xx, 429,
  throttling) become :class:`~healer.errors.ProviderError`, the rest of libcloud's (HTTP 4xx,
  refused credentials, other ``LibcloudError``\ s, a method the driver does not implement)
  :class:`~healer.errors.PermanentError`, always naming the provider and the operation and never
  carrying a credential or a signed URL. Anything else (``ValueError``, ``TypeError``,
  ``KeyError``, ``AttributeError``, ...) is a programming error, in healer or in a driver, and
  propagates unchanged: calling it a permanent cloud failure would hide the bug. A driver speaks
  in libcloud's errors; the lab cloud's, for instance, answers HTTP 503 while its database is
  busy.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import queue
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
import structlog
from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
from libcloud.common.types import InvalidCredsError, LibcloudError, MalformedResponseError
from libcloud.compute.base import Node, NodeDriver, NodeImage, NodeLocation, NodeSize

from healer.cloud.machines import Machine, MachineRequest, MachineState, tags_match
from healer.errors import ConfigError, HealerError, PermanentError, ProviderError
from healer.model import TAG_CLUSTER
from providers.dialects import Dialect, http_status
from providers.reconciler import DriverInfra, InfraBackend

T = TypeVar("T")

log = structlog.get_logger("providers")

# Error codes some clouds send with a 4xx status although the request may succeed later.
_THROTTLED = ("Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests")
_URL = re.compile(r"https?://[^\s'\"<>]+")
# Query strings, absolute or not ("url: /?Action=...&Signature=..."): signed requests carry the
# key id and a signature there.
_QUERY = re.compile(r"\?[\w.%-]+=[^\s'\"<>()]*")
# Node extras that may hold secrets (cloud-init join tokens) never leave the provider.
_PRIVATE_EXTRA = re.compile(r"user_?data|password|secret|token|key_?material", re.IGNORECASE)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without credential values and without URL query strings (signed URLs)."""

    def _strip_query(match: re.Match[str]) -> str:
        parts = urlsplit(match.group(0))
        return f"{parts.scheme}://{parts.netloc}{parts.path}"

    text = _QUERY.sub("?...", _URL.sub(_strip_query, text))
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def map_libcloud_error(
    exc: BaseException, *, provider: str, operation: str, secrets: Iterable[str] = ()
) -> HealerError | None:
    """The healer error for a libcloud (or transport) failure; ``None`` if it is not one.

    Unmapped exceptions are programming errors and are left to propagate unchanged.
    """
    where = f"provider {provider}: {operation} failed"
    detail = scrub(str(exc) or type(exc).__name__, secrets)

    if isinstance(exc, InvalidCredsError):
        return PermanentError(f"{where}: the cloud rejected the credentials: {detail}")
    status = http_status(exc)
    if isinstance(exc, BaseHTTPError | LibcloudError) and status is not None:
        if status == 429 or status >= 500 or any(code in detail for code in _THROTTLED):
            return ProviderError(
                f"{where}: HTTP {status} {detail} (temporary; will retry)", delay=_retry_after(exc)
            )
        if status in (401, 403):
            return PermanentError(
                f"{where}: HTTP {status}, the cloud refused the credentials or permission: {detail}"
            )
        return PermanentError(f"{where}: HTTP {status}, the cloud rejected the request: {detail}")
    if isinstance(exc, MalformedResponseError):
        # Typically an HTML error page from a proxy or load balancer in trouble.
        return ProviderError(f"{where}: unreadable answer from the cloud (temporary): {detail}")
    if isinstance(exc, requests.RequestException | http.client.HTTPException | OSError):
        return ProviderError(f"{where}: cannot reach the cloud (temporary): {detail}")
    if isinstance(exc, LibcloudError):
        return PermanentError(f"{where}: {detail}")
    if isinstance(exc, NotImplementedError):
        # libcloud's NodeDriver base class answers so for a method the driver does not have.
        return PermanentError(f"{where}: the driver does not support it: {detail}")
    return None


def _retry_after(exc: BaseException) -> float | None:
    if isinstance(exc, RateLimitReachedError) and getattr(exc, "retry_after", None):
        return float(exc.retry_after)
    headers = getattr(exc, "headers", None) or {}
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class DriverProvider:
    """A provider over one libcloud driver class and its :class:`~providers.dialects.Dialect`.

    ``make_driver`` builds a fresh driver; it is called once up front (so bad driver arguments
    fail at startup, as a :class:`~healer.errors.ConfigError`) and again whenever more threads
    than drivers are busy. ``secrets`` are scrubbed from every error message.
    """

    def __init__(
        self,
        *,
        name: str,
        cluster: str,
        make_driver: Callable[[], NodeDriver],
        dialect: Dialect,
        max_workers: int = 4,
        secrets: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.cluster = cluster
        self._dialect = dialect
        self._make_driver = make_driver
        self._secrets = tuple(s for s in secrets if s)
        try:
            first = make_driver()
        except Exception as exc:
            raise ConfigError(
                f"provider {name}: cannot build the libcloud driver: {scrub(str(exc), secrets)}"
            ) from exc
        self._idle: queue.SimpleQueue[NodeDriver] = queue.SimpleQueue()
        self._idle.put(first)
        self._executor = ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix=f"provider-{name}"
        )
        self._closed = False
        # Size, image and location catalogues, shared by the worker threads. Kept for the life
        # of the provider (they rarely change) and dropped whenever a create fails.
        self._catalog: dict[str, Any] = {}
        self._catalog_lock = threading.Lock()
        # Serialises calls on one name (create) or one id (destroy) within this process, so two
        # tasks cannot both find "no machine yet" and create two. Weak: unused locks go away.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # Networks, firewalls and load balancers, for plugins that have them (use_infra).
        self.infra: DriverInfra | None = None

    def use_infra(self, backend: InfraBackend) -> DriverInfra:
        """Give this provider infrastructure operations; machines it creates from now on are
        placed in the cluster's subnet and load balancer whenever healer built them."""
        self.infra = DriverInfra(self, backend)
        return self.infra

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, cluster={self.cluster!r})"

    # -- Provider ----------------------------------------------------------------------------

    async def create_machine(self, request: MachineRequest) -> Machine:
        op = f"create_machine({request.name})"
        self._check_request(op, request)
        async with self._lock(f"name:{request.name}"):
            existing = await self._run(op, self._get_sync, request.name)
            if existing is not None:
                if tags_match(existing.tags, request.tags):
                    log.info(
                        "provider.create_reused",
                        provider=self.name,
                        machine=existing.name,
                        machine_id=existing.id,
                    )
                    # A retry after an ambiguous failure: the first call may have stopped short
                    # of the load balancer.
                    await self._attach(op, existing)
                    return existing
                raise PermanentError(
                    f"provider {self.name}: {op} refused: machine {existing.id} already has that "
                    f"name but other tags ({_tag_diff(existing.tags, request.tags)}); healer will "
                    "not adopt or replace a machine it cannot prove is its own"
                )
            machine = await self._run(op, self._create_sync, request)
        log.info(
            "provider.machine_created",
            provider=self.name,
            machine=machine.name,
            machine_id=machine.id,
        )
        await self._attach(op, machine)
        return machine

    async def destroy_machine(self, machine: Machine) -> bool:
        op = f"destroy_machine({machine.name}, id={machine.id})"
        self.check_cluster(op, machine)
        async with self._lock(f"id:{machine.id}"):
            destroyed = await self._run(op, self._destroy_sync, machine)
        log.info(
            "provider.machine_destroyed" if destroyed else "provider.destroy_skipped",
            provider=self.name,
            machine=machine.name,
            machine_id=machine.id,
        )
        return destroyed

    async def get_machine(self, name: str) -> Machine | None:
        return await self._run(f"get_machine({name})", self._get_sync, name)

    async def list_machines(self, tags: Mapping[str, str]) -> list[Machine]:
        wanted = dict(tags)
        return await self._run(f"list_machines({_fmt_tags(wanted)})", self._list_sync, wanted)

    async def run_blocking(self, op: str, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(driver, op, *args)`` in the worker pool with this provider's error mapping.

        For code in this package that makes its own libcloud calls (the infrastructure backends).
        """
        return await self._run(op, fn, *args)

    def lock(self, key: str) -> asyncio.Lock:
        """The in-process lock for ``key``, shared by every caller of this provider."""
        return self._lock(key)

    async def _attach(self, op: str, machine: Machine) -> None:
        infra = self.infra
        if infra is not None:
            await self._run(op, lambda driver, _op: infra.attach(driver, machine))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Waits for calls already running; a libcloud call cannot be interrupted anyway.
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        while not self._idle.empty():
            _close_driver(self._idle.get_nowait())
        if self.infra is not None:
            self.infra.backend.close()

    # -- work done in the pool (blocking) ---------------------------------------------------

    def _create_sync(self, driver: NodeDriver, op: str, request: MachineRequest) -> Machine:
        location = (
            self._resolve_location(driver, op, request.location) if request.location else None
        )
        size = self._resolve_size(driver, op, request.size, location)
        image = self._resolve_image(driver, op, request.image)
        # The cluster's subnet and firewall first, so an explicit machine extra still wins.
        kwargs = self.infra.placement_kwargs(driver, request) if self.infra is not None else {}
        kwargs.update(request.extra)
        kwargs.update(self._dialect.create_kwargs(tags=request.tags, user_data=request.user_data))
        try:
            node = self._dialect.create_node(
                driver, name=request.name, size=size, image=image, location=location, **kwargs
            )
        except Exception:
            # The catalogue may be stale (an image was withdrawn): look it up afresh next time.
            with self._catalog_lock:
                self._catalog.clear()
            raise
        return self._to_machine(node)

    def check_cluster(self, op: str, machine: Machine) -> None:
        """Refuse a machine not tagged for this provider's cluster: defence in depth, a provider
        built for one cluster never destroys or powers off another's machine."""
        if machine.tags.get(TAG_CLUSTER) != self.cluster:
            raise PermanentError(
                f"provider {self.name}: {op} refused: the machine is not tagged "
                f"{TAG_CLUSTER}={self.cluster}"
            )

    def live_node(self, driver: NodeDriver, op: str, machine: Machine) -> Node | None:
        """``machine`` re-read by id: ``None`` when it is gone or terminated, and
        ``PermanentError`` (nothing done) when its live name or tags no longer match."""
        node = self._dialect.get_node(driver, machine.id)
        if node is None or self._dialect.state_of(node) is MachineState.TERMINATED:
            return None
        live_tags = self._dialect.tags_of(node)
        if node.name != machine.name or not tags_match(live_tags, machine.tags):
            raise PermanentError(
                f"provider {self.name}: {op} refused: the live machine no longer matches "
                f"(name {node.name!r}; {_tag_diff(live_tags, machine.tags)}); nothing done"
            )
        return node

    def _destroy_sync(self, driver: NodeDriver, op: str, machine: Machine) -> bool:
        node = self.live_node(driver, op, machine)
        if node is None:
            return False
        if self.infra is not None:
            # Out of the load balancer first, so no client is sent to a machine going away.
            self.infra.detach(driver, machine)
        try:
            done = driver.destroy_node(node)
        except Exception as exc:
            if self._dialect.is_not_found(exc):
                return False  # gone between the read and the destroy
            raise
        if done is False:
            # Some drivers answer False when another client terminated it first; check which.
            again = self._dialect.get_node(driver, machine.id)
            if again is None or self._dialect.state_of(again) is MachineState.TERMINATED:
                return False
            raise ProviderError(f"provider {self.name}: {op} failed: the driver reported failure")
        return True

    def _get_sync(self, driver: NodeDriver, op: str, name: str) -> Machine | None:
        live = [
            n
            for n in self._dialect.list_nodes(driver, name=name)
            if n.name == name and self._dialect.state_of(n) is not MachineState.TERMINATED
        ]
        if len(live) > 1:
            ids = ", ".join(sorted(str(n.id) for n in live))
            raise PermanentError(
                f"provider {self.name}: {op}: {len(live)} live machines share the name "
                f"{name!r} ({ids}); healer will not pick one"
            )
        return self._to_machine(live[0]) if live else None

    def _list_sync(self, driver: NodeDriver, op: str, tags: Mapping[str, str]) -> list[Machine]:
        out: list[Machine] = []
        for node in self._dialect.list_nodes(driver, tags=tags):
            if self._dialect.state_of(node) is MachineState.TERMINATED:
                continue
            machine = self._to_machine(node)
            if tags_match(machine.tags, tags):
                out.append(machine)
        return out

    # -- resolving sizes, images and locations ----------------------------------------------

    def _cached(self, key: str, load: Callable[[], T]) -> T:
        with self._catalog_lock:
            if key in self._catalog:
                return self._catalog[key]  # type: ignore[no-any-return]
        value = load()
        with self._catalog_lock:
            self._catalog[key] = value
        return value

    def _resolve_location(self, driver: NodeDriver, op: str, ref: str) -> NodeLocation:
        locations = self._cached("locations", lambda: list(driver.list_locations()))
        return self._pick(op, "location", ref, locations, list_available=True)

    def _resolve_size(
        self, driver: NodeDriver, op: str, ref: str, location: NodeLocation | None
    ) -> NodeSize:
        where = location.id if location is not None else ""
        sizes = self._cached(f"sizes@{where}", lambda: list(driver.list_sizes(location=location)))
        return self._pick(op, "size", ref, sizes, list_available=len(sizes) <= 20)

    def _resolve_image(self, driver: NodeDriver, op: str, ref: str) -> NodeImage:
        # A dialect that can ask the cloud directly is not cached: image names get re-pointed
        # (a new AMI published under the old name), and one lookup per create is cheap.
        found = self._dialect.find_images(driver, ref)
        if found is not None:
            return self._pick(op, "image", ref, found, list_available=False)
        images = self._cached("images", lambda: list(driver.list_images()))
        return self._pick(op, "image", ref, images, list_available=len(images) <= 20)

    def _pick(self, op: str, kind: str, ref: str, items: Sequence[T], *, list_available: bool) -> T:
        by_id = [i for i in items if str(getattr(i, "id", "")) == ref]
        if by_id:
            return by_id[0]
        by_name = [i for i in items if getattr(i, "name", None) == ref]
        if len(by_name) == 1:
            return by_name[0]
        if by_name:
            ids = ", ".join(str(getattr(i, "id", "?")) for i in by_name)
            raise PermanentError(
                f"provider {self.name}: {op}: {len(by_name)} {kind}s are named {ref!r} ({ids}); "
                "give the id"
            )
        hint = ""
        if list_available:
            names = sorted({str(getattr(i, "name", None) or getattr(i, "id", "")) for i in items})
            hint = f"; available: {', '.join(names) or '(none)'}"
        raise PermanentError(
            f"provider {self.name}: {op}: no {kind} {ref!r} (looked up by id and name){hint}"
        )

    # -- plumbing -----------------------------------------------------------------------------

    async def _run(self, op: str, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise PermanentError(f"provider {self.name}: {op} called after close()")
        loop = asyncio.get_running_loop()
        call = functools.partial(self._with_driver, fn, op, *args)
        try:
            return await loop.run_in_executor(self._executor, call)
        except HealerError:
            raise
        except Exception as exc:
            mapped = map_libcloud_error(
                exc, provider=self.name, operation=op, secrets=self._secrets
            )
            if mapped is None:
                raise
            log.warning(
                "provider.call_failed",
                provider=self.name,
                operation=op,
                error=str(mapped),
                temporary=isinstance(mapped, ProviderError),
            )
            raise mapped from exc

    def _with_driver(self, fn: Callable[..., T], op: str, *args: Any) -> T:
        try:
            driver = self._idle.get_nowait()
        except queue.Empty:
            driver = self._make_driver()
        try:
            return fn(driver, op, *args)
        finally:
            self._idle.put(driver)

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    def _check_request(self, op: str, request: MachineRequest) -> None:
        if not request.name:
            raise PermanentError(f"provider {self.name}: {op}: a machine needs a name")
        if request.tags.get(TAG_CLUSTER) != self.cluster:
            # Without it healer could never destroy the machine again (see destroy_machine).
            raise PermanentError(
                f"provider {self.name}: {op}: the request must carry the tag "
                f"{TAG_CLUSTER}={self.cluster}"
            )
        try:
            kwargs = self._dialect.create_kwargs(tags=request.tags, user_data=request.user_data)
        except PermanentError as exc:
            raise PermanentError(f"provider {self.name}: {op}: {exc}") from exc
        own = {"name", "size", "image", "location", *kwargs}
        clash = sorted(own & set(request.extra))
        if clash:
            raise PermanentError(
                f"provider {self.name}: {op}: machine extra may not set {', '.join(clash)}; "
                "healer sets those itself"
            )

    def _to_machine(self, node: Node) -> Machine:
        extra: dict[str, Any] = {
            "provider_state": str(getattr(node.state, "value", node.state)),
            "public_ips": list(node.public_ips or []),
        }
        for key, value in (node.extra or {}).items():
            if key == "tags" or _PRIVATE_EXTRA.search(key):
                continue
            if value is None or isinstance(value, str | int | float | bool):
                extra[key] = value
        return Machine(
            id=str(node.id),
            name=str(node.name),
            state=self._dialect.state_of(node),
            tags=self._dialect.tags_of(node),
            private_ips=tuple(str(ip) for ip in node.private_ips or ()),
            created_at=self._dialect.created_at(node),
            extra=extra,
        )


def _close_driver(driver: NodeDriver) -> None:
    # libcloud has no close(); its HTTP connections hold a requests Session.
    session = getattr(getattr(driver.connection, "connection", None), "session", None)
    if isinstance(session, requests.Session):
        session.close()


def _fmt_tags(tags: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items()))


def _tag_diff(actual: Mapping[str, str], wanted: Mapping[str, str]) -> str:
    diffs = [
        f"{k}: wanted {v!r}, found {actual.get(k)!r}"
        for k, v in sorted(wanted.items())
        if actual.get(k) != v
    ]
    return "; ".join(diffs) if diffs else "tags match"
