"""The GCE dialect: tags as labels (encoded to GCE's alphabet), user data as metadata."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from libcloud.compute.base import Node, NodeDriver

from healer.errors import PermanentError
from providers.dialects import Dialect

# GCE label keys and values: lowercase letters, digits, "-" and "_", at most 63 characters;
# keys start with a letter. Tags like "healer.io/pool" need an encoding: every other character
# becomes "_" plus two hex digits per UTF-8 byte ("healer.io/pool" -> "healer_2eio_2fpool"), and
# "_" itself is escaped so that decoding is exact.
_GCE_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_GCE_ESCAPE = re.compile(r"_([0-9a-f]{2})")
_GCE_MAX = 63


def gce_encode(text: str) -> str:
    return "".join(c if c in _GCE_PLAIN else "".join(f"_{b:02x}" for b in c.encode()) for c in text)


def gce_decode(label: str) -> str:
    out = bytearray()
    pos = 0
    for match in _GCE_ESCAPE.finditer(label):
        out += label[pos : match.start()].encode()
        out.append(int(match.group(1), 16))
        pos = match.end()
    out += label[pos:].encode()
    return out.decode("utf-8", errors="replace")


class GceDialect(Dialect):
    """Google Compute Engine: tags become labels (encoded), user data the ``user-data`` key."""

    name = "gce"

    def create_kwargs(self, *, tags: Mapping[str, str], user_data: str) -> dict[str, Any]:
        labels: dict[str, str] = {}
        for key, value in tags.items():
            k, v = gce_encode(key), gce_encode(value)
            if not k[:1].isalpha():
                raise PermanentError(f"tag {key!r} cannot be a GCE label: keys must start a-z")
            for what, text in (("key", k), ("value", v)):
                if len(text) > _GCE_MAX:
                    raise PermanentError(
                        f"tag {key!r}: its encoded GCE label {what} {text!r} is longer than "
                        f"{_GCE_MAX} characters"
                    )
            labels[k] = v
        kwargs: dict[str, Any] = {"ex_labels": labels}
        if user_data:
            kwargs["ex_metadata"] = {"user-data": user_data}
        return kwargs

    def created_at(self, node: Node) -> float | None:
        # libcloud's GCE driver leaves Node.created_at empty; the API's timestamp is in extra.
        stamp = (node.extra or {}).get("creationTimestamp")
        try:
            return datetime.fromisoformat(str(stamp)).timestamp() if stamp else None
        except ValueError:
            return None

    def tags_of(self, node: Node) -> dict[str, str]:
        labels = (node.extra or {}).get("labels") or {}
        return {gce_decode(str(k)): gce_decode(str(v)) for k, v in dict(labels).items()}

    def list_nodes(
        self, driver: NodeDriver, *, name: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[Node]:
        return list(driver.list_nodes(ex_zone="all"))

    def get_node(self, driver: NodeDriver, node_id: str) -> Node | None:
        return next((n for n in driver.list_nodes(ex_zone="all") if n.id == node_id), None)
