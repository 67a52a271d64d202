"""The HTTP routes: which verb a request is (for the request counters), and the dispatch of a
URL (``/api/v1/namespaces/<ns>/pods/<name>/eviction``, ...) to the verbs on the store, the watch
stream or the eviction subresource, with the apiserver's 404/405 answers for the rest."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from aiohttp import web

from healer.clock import Clock
from healer.lab.apiserver import verbs
from healer.lab.apiserver.errors import ApiError
from healer.lab.apiserver.eviction import evict
from healer.lab.apiserver.resources import PATH, RESOURCES, Obj, truthy
from healer.lab.apiserver.store import Store
from healer.lab.apiserver.watch import serve_watch


def classify(request: web.Request) -> tuple[str, str]:
    """``(verb, kind)`` for the request counters: ``("LIST", "pods")``, ``("POST",
    "pods/eviction")``. GETs of collections are counted as the verbs LIST and WATCH."""
    m = PATH.fullmatch(request.path)
    if m is None:
        return request.method, request.path
    kind = m["plural"] if m["sub"] is None else f"{m['plural']}/{m['sub']}"
    verb = request.method
    if verb == "GET" and m["name"] is None:
        verb = "WATCH" if truthy(request.query.get("watch")) else "LIST"
    return verb, kind


async def dispatch(request: web.Request, store: Store, clock: Clock) -> web.StreamResponse:
    path = request.path
    if path in ("/healthz", "/readyz", "/livez"):
        return web.Response(text="ok")
    if path == "/version":
        return web.json_response({"major": "1", "minor": "30", "gitVersion": "v1.30.0-fake"})
    m = PATH.fullmatch(path)
    res = RESOURCES.get((m["prefix"], m["plural"])) if m else None
    if m is None or res is None:
        raise ApiError(404, "the server could not find the requested resource")
    ns, name, sub = m["ns"], m["name"], m["sub"]
    if ns is not None and not res.namespaced:
        raise ApiError(404, "the server could not find the requested resource")
    method = request.method
    if name is None:
        if method == "GET":
            if truthy(request.query.get("watch")):
                return await serve_watch(request, store, clock, res, ns)
            return web.json_response(verbs.list_objects(store, res, ns, request.query))
        if method == "POST":
            if res.namespaced and ns is None:
                raise ApiError(405, "the server does not allow this method")
            body = await _json_body(request)
            obj = verbs.create_from_request(store, clock, res, ns or "", body)
            return web.json_response(obj, status=201)
        raise ApiError(405, "the server does not allow this method on the requested resource")
    if res.namespaced and ns is None:
        raise ApiError(404, "the server could not find the requested resource")
    key_ns = ns or ""
    if sub not in (None, "status", "eviction"):
        raise ApiError(404, "the server could not find the requested resource")
    if sub == "eviction":
        if res.plural != "pods" or method != "POST":
            raise ApiError(405, "the server does not allow this method")
        await _json_body(request)
        return web.json_response(evict(store, clock, key_ns, name), status=201)
    if method == "GET":
        return web.json_response(verbs.get(store, res, key_ns, name))
    if method == "DELETE":
        grace = await _grace_period(request)
        return web.json_response(verbs.delete(store, clock, res, key_ns, name, grace))
    if method in ("PUT", "PATCH"):
        body = await _json_body(request)
        if method == "PUT":
            obj = verbs.update(store, clock, res, key_ns, name, body, status_only=sub == "status")
        else:
            obj = verbs.patch(
                store,
                clock,
                res,
                key_ns,
                name,
                body,
                request.content_type,
                status_only=sub == "status",
            )
        return web.json_response(obj)
    raise ApiError(405, "the server does not allow this method on the requested resource")


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"{}")
    except ValueError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from exc


async def _grace_period(request: web.Request) -> int | None:
    """A DELETE's ``gracePeriodSeconds``: the query parameter, else the DeleteOptions body."""
    grace: int | None = None
    raw = request.query.get("gracePeriodSeconds")
    body: Obj = {}
    if request.can_read_body:
        with contextlib.suppress(ValueError):
            parsed = json.loads(await request.read() or b"{}")
            body = parsed if isinstance(parsed, dict) else {}
    if raw is None and body.get("gracePeriodSeconds") is not None:
        raw = str(body["gracePeriodSeconds"])
    if raw is not None:
        try:
            grace = int(raw)
        except ValueError as exc:
            raise ApiError(400, f"invalid gracePeriodSeconds {raw!r}") from exc
    return grace
