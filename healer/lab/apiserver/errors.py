"""Error answers: the ``Status`` object the apiserver sends with every failure, and the
exception that carries one out of a handler."""

from __future__ import annotations

from aiohttp import web

from healer.lab.apiserver.resources import Obj, Resource

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiError(Exception):
    """An error answer: carries the ``Status`` object the apiserver would send."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: Obj | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status_object(code, message, reason=reason, details=details)


def status_object(
    code: int, message: str, *, reason: str | None = None, details: Obj | None = None
) -> Obj:
    """A ``Status`` as the apiserver sends it with every error."""
    out: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason if reason is not None else REASONS.get(code, ""),
        "code": code,
    }
    if details is not None:
        out["details"] = details
    return out


def not_found(res: Resource, name: str) -> ApiError:
    return ApiError(
        404,
        f'{res.qualified} "{name}" not found',
        details={"name": name, "group": res.group, "kind": res.plural},
    )


def error_response(exc: ApiError) -> web.Response:
    return web.json_response(exc.status, status=exc.code)
