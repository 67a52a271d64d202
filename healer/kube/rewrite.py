"""Every Secret read and written back unchanged, so the API server stores it again with its
current write key: the third stage of an encryption-key rotation
(:mod:`healer.provisioning.rotation`), what ``kubectl get secrets -A -o json | kubectl replace
-f -`` does. The API server writes a Secret whose stored form came from an older key even though
nothing changed in it.

The list is read in pages; each Secret is replaced at the resourceVersion it was read at. One
changed meanwhile (409) is read again and replaced as it is now; one deleted meanwhile (404) is
skipped: whoever wrote or deleted it did the rewrite's work already.
"""

from __future__ import annotations

from collections.abc import Callable

from healer.errors import TemporaryError
from healer.kube.connection import Connection
from healer.kube.records import Json

PAGE = 250
CONFLICT_TRIES = 5


async def rewrite_secrets(conn: Connection, *, on_each: Callable[[str], None] | None = None) -> int:
    """Replace every Secret of the cluster as it is; returns how many were written."""
    written = 0
    token: str | None = None
    while True:
        kwargs: dict[str, object] = {"limit": PAGE}
        if token:
            kwargs["_continue"] = token
        body = conn._expect(
            "list secrets",
            await conn._call("list secrets", conn._core.list_secret_for_all_namespaces, **kwargs),
        )
        for item in body.get("items") or []:
            if await _rewrite(conn, item):
                written += 1
                if on_each is not None:
                    meta = item["metadata"]
                    on_each(f"{meta.get('namespace', '')}/{meta['name']}")
        token = (body.get("metadata") or {}).get("continue")
        if not token:
            return written


async def _rewrite(conn: Connection, item: Json) -> bool:
    meta = item["metadata"]
    ns, name = meta.get("namespace", ""), meta["name"]
    what = f'replace secret "{ns}/{name}"'
    for _ in range(CONFLICT_TRIES):
        doc = {"apiVersion": "v1", "kind": "Secret", **item}
        answer = await conn._call(what, conn._core.replace_namespaced_secret, name, ns, doc)
        if answer.status == 404:
            return False
        if answer.status != 409:
            conn._expect(what, answer)
            return True
        fresh = await conn._call(
            f'get secret "{ns}/{name}"', conn._core.read_namespaced_secret, name, ns
        )
        if fresh.status == 404:
            return False
        item = conn._expect(f'get secret "{ns}/{name}"', fresh)
    raise TemporaryError(f"{what}: changed concurrently {CONFLICT_TRIES} times; try again")
