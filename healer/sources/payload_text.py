"""Describing untrusted payload values in rejection messages, shared by the MQTT and webhook
parsers: bounded, so a sender cannot make our logs large."""

from __future__ import annotations

from typing import Any


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
