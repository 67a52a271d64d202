"""The rows of the ``alert_blocks`` table, and the one-time import of the JSON file in which
healer before schema 2 kept them.

A block is keyed by (cluster, alert name, alert fingerprint); what a block means and when it
lapses is the planner's business (:mod:`healer.planner.alert_blocks`). Older versions wrote the
blocks to ``alert-blocks.json`` in the state directory (atomic rename on every change); the store
imports that file when it opens the database beside it, then renames it to
``alert-blocks.json.imported`` so an upgrade loses no block and nothing reads the file again.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from healer.telemetry.lazylog import get_logger

log = get_logger("healer.store")  # structlog, imported when it first logs

LEGACY_FILE: Final = "alert-blocks.json"
IMPORTED_SUFFIX: Final = ".imported"
DAMAGED_SUFFIX: Final = ".damaged"


@dataclass(frozen=True)
class Block:
    cluster: str
    alert: str
    fingerprint: str
    since: float  # when the alert started firing (as the sender says)
    expires_at: float  # last firing notification + ttl


def read_legacy(path: Path) -> list[Block] | None:
    """The blocks of an ``alert-blocks.json`` written by an older healer; None when there is
    no such file.

    A file that cannot be read or parsed is renamed to ``alert-blocks.damaged`` (kept for a
    human) and said loudly (``alert_blocks.unreadable``): refusing to start over a damaged cache
    would be worse than starting without it. A malformed entry is left out and said
    (``alert_blocks.bad_entry``); the others are kept.
    """
    try:
        raw: Any = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        with contextlib.suppress(OSError):
            os.replace(path, path.with_suffix(DAMAGED_SUFFIX))
        log.error("alert_blocks.unreadable", path=str(path), error=str(exc))
        return []
    out: list[Block] = []
    for item in raw if isinstance(raw, list) else []:
        try:
            out.append(
                Block(
                    cluster=str(item["cluster"]),
                    alert=str(item["alert"]),
                    fingerprint=str(item["fingerprint"]),
                    since=float(item["since"]),
                    expires_at=float(item["expires_at"]),
                )
            )
        except (KeyError, TypeError, ValueError):
            log.error("alert_blocks.bad_entry", path=str(path), entry=str(item)[:200])
    return out


def set_aside(path: Path) -> Path:
    """Rename an imported legacy file so it is not imported again; the new path."""
    target = path.with_name(path.name + IMPORTED_SUFFIX)
    os.replace(path, target)
    return target
