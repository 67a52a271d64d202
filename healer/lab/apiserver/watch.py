"""Watches over HTTP: the newline-delimited event stream a ``?watch=true`` GET gets, resumed
from a resourceVersion (or starting with every object ``ADDED``), ``410 Expired`` for a version
older than the history kept, ended by ``timeoutSeconds`` (with a ``BOOKMARK`` when asked for),
by the store (:meth:`Store.end_watches`) or by the client hanging up."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from healer.clock import Clock
from healer.lab.apiserver.errors import ApiError
from healer.lab.apiserver.resources import Obj, Resource, truthy
from healer.lab.apiserver.selectors import make_predicate
from healer.lab.apiserver.store import Store

# The apiserver closes watches without timeoutSeconds after a randomised ~30-60 min; one fixed
# value is enough here.
DEFAULT_WATCH_TIMEOUT = 1800.0


async def serve_watch(
    request: web.Request, store: Store, clock: Clock, res: Resource, ns: str | None
) -> web.StreamResponse:
    query = request.query
    predicate = make_predicate(res, ns, query)
    raw_rv = query.get("resourceVersion", "")
    try:
        since = int(raw_rv) if raw_rv not in ("", "0") else None
    except ValueError as exc:
        raise ApiError(400, f"invalid resource version {raw_rv!r}") from exc
    try:
        timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
    except ValueError as exc:
        raise ApiError(400, "invalid timeoutSeconds") from exc
    bookmarks = truthy(query.get("allowWatchBookmarks"))

    opened = store.watch(res, predicate, since)

    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    response.enable_chunked_encoding()
    timer: asyncio.Future[None] | None = None
    getter: asyncio.Future[tuple[str, Obj] | None] | None = None
    try:
        await response.prepare(request)
        if opened is None:
            message = f"too old resource version: {since} ({store.compacted_rv})"
            await _write_event(response, "ERROR", ApiError(410, message).status)
            return response
        backlog, watcher = opened
        for event, obj in backlog:
            await _write_event(response, event, obj)
        timer = asyncio.ensure_future(clock.sleep(timeout))
        ended_by_timeout = False
        while True:
            getter = asyncio.ensure_future(watcher.queue.get())
            done, _ = await asyncio.wait({getter, timer}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                ended_by_timeout = True
                break
            item = getter.result()
            getter = None
            if item is None:
                break
            await _write_event(response, item[0], item[1])
        if bookmarks and ended_by_timeout:
            mark = {
                "kind": res.kind,
                "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(store.rv)},
            }
            await _write_event(response, "BOOKMARK", mark)
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away; nothing to tell it
    finally:
        if opened is not None:
            store.unwatch(opened[1])
        for fut in (timer, getter):
            if fut is not None and not fut.done():
                fut.cancel()
    return response


async def _write_event(response: web.StreamResponse, event: str, obj: Obj) -> None:
    await response.write(json.dumps({"type": event, "object": obj}).encode() + b"\n")
