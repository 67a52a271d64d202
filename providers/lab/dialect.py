"""The lab cloud's dialect: tags as ``ex_tags``, lookups by id, the database as the key."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from libcloud.compute.base import Node, NodeDriver

from providers.dialects import Dialect
from providers.lab.driver import DB_FILENAME


class LabDialect(Dialect):
    name = "healer_lab"

    def create_kwargs(self, *, tags: Mapping[str, str], user_data: str) -> dict[str, Any]:
        return {"ex_tags": dict(tags), "ex_userdata": user_data}

    def get_node(self, driver: NodeDriver, node_id: str) -> Node | None:
        found = driver.list_nodes(ex_node_ids=[node_id])
        return found[0] if found else None

    def default_key(self, state_dir: Path) -> str | None:
        return str(state_dir / DB_FILENAME)
