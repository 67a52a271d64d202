"""Decoding untrusted JSON payloads, and describing their values in rejection messages, shared
by the MQTT and webhook parsers: bounded, so a sender cannot make our logs large.

A payload is decoded by msgspec first (in C, about twice as fast as the standard library on an
Alertmanager notification); whatever msgspec refuses is decoded again by the standard library's
decoder, which decides, with its own messages. Where msgspec accepts a document, it decodes it
to the value the standard library gives (tests/test_payload_text.py holds the two to that);
what the standard library alone accepts (an out-of-range float such as ``1e400``, an escaped
lone surrogate) it still accepts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import msgspec


def json_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "an object"
    return type(value).__name__


def short(value: Any, limit: int = 40) -> str:
    """A bounded repr for messages: senders control these values and logs must stay small."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


class PayloadRejected(Exception):
    """A payload that is not a bounded, UTF-8, JSON object; ``reason`` is a parser reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _reject_constant(name: str) -> Any:
    raise PayloadRejected("bad_json", f"contains {name}, which is not JSON")


# One decoder for every payload: json.loads(text, parse_constant=...) builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_FAST = msgspec.json.Decoder()


def decode_json_object(data: bytes, limit: int, *, what: str) -> dict[str, Any]:
    """``data`` as a JSON object, or :class:`PayloadRejected` with reason ``too_large``,
    ``bad_json`` or ``bad_schema``; ``what`` ("payload", "body") names it in messages."""
    if len(data) > limit:
        raise PayloadRejected("too_large", f"{what} is {len(data)} bytes; the limit is {limit}")
    try:
        fast = _FAST.decode(data)
    except (msgspec.DecodeError, RecursionError):
        pass  # the standard library's decoder decides, and says why
    else:
        if isinstance(fast, dict):
            return fast
    return _decode_slowly(data, what=what)


def _decode_slowly(data: bytes, *, what: str) -> dict[str, Any]:
    """:func:`decode_json_object` with the standard library's decoder alone."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadRejected("bad_json", f"{what} is not UTF-8 (byte {exc.start})") from None
    try:
        doc = _DECODER.decode(text)
    except PayloadRejected as exc:
        raise PayloadRejected(exc.reason, f"{what} {exc}") from None
    except ValueError as exc:  # JSONDecodeError, and over-long integer literals
        raise PayloadRejected("bad_json", f"{what} is not valid JSON: {first_line(exc)}") from None
    except RecursionError:
        raise PayloadRejected("bad_json", f"{what} is nested too deeply") from None
    if not isinstance(doc, dict):
        raise PayloadRejected("bad_schema", f"{what} must be a JSON object, not {json_type(doc)}")
    return doc


MAX_REASON_LEN = 128
MAX_MESSAGE_LEN = 1024


def prose(doc: Mapping[str, Any]) -> dict[str, str]:
    """The optional free-text ``reason`` and ``message`` of a payload, bounded so logs and
    storage stay small; :class:`PayloadRejected` (``bad_schema``) when they are not."""
    out: dict[str, str] = {}
    for key, limit in (("reason", MAX_REASON_LEN), ("message", MAX_MESSAGE_LEN)):
        value = doc.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise PayloadRejected(
                "bad_schema", f"field {key!r} must be a string, not {json_type(value)}"
            )
        if len(value) > limit:
            raise PayloadRejected(
                "bad_schema", f"field {key!r} is {len(value)} characters; the limit is {limit}"
            )
        out[key] = value
    return out
