"""Namespaces, secrets and RBAC objects: what cluster policy and provisioning manage."""

from __future__ import annotations

import base64
from typing import Any

from healer.errors import PermanentError, TemporaryError
from healer.kube.connection import Answer, Connection
from healer.kube.records import (
    RBAC_KINDS,
    Json,
    NamespaceInfo,
    RbacObject,
    SecretInfo,
    namespace_from_json,
    rbac_from_json,
    secret_from_json,
)


class AccessApi(Connection):
    """Namespaces, secrets and RBAC."""

    async def list_namespaces(self) -> list[NamespaceInfo]:
        body = self._expect(
            "list namespaces", await self._call("list namespaces", self._core.list_namespace)
        )
        return [namespace_from_json(item) for item in body.get("items") or []]

    async def patch_namespace_labels(self, name: str, labels: dict[str, str | None]) -> bool:
        """Set (or, with ``None``, remove) namespace labels. False if the namespace is gone."""
        what = f'label namespace "{name}"'
        answer = await self._call(
            what,
            self._core.patch_namespace,
            name,
            {"metadata": {"labels": labels}},
            _content_type="application/merge-patch+json",
        )
        if answer.status == 404:
            return False
        self._expect(what, answer)
        return True

    # -------------------------------------------------------------- secrets

    async def get_secret(self, namespace: str, name: str) -> SecretInfo | None:
        what = f'get secret "{namespace}/{name}"'
        answer = await self._call(what, self._core.read_namespaced_secret, name, namespace)
        if answer.status == 404:
            return None
        return secret_from_json(self._expect(what, answer))

    async def put_secret(
        self,
        namespace: str,
        name: str,
        *,
        type_: str,
        data: dict[str, bytes],
        labels: dict[str, str] | None = None,
        resource_version: str | None = None,
    ) -> None:
        """Create the Secret, or replace it as read at ``resource_version``. A concurrent
        change (409) raises :class:`TemporaryError`. The data never appears in errors."""
        what = f'put secret "{namespace}/{name}"'
        meta: Json = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
        if resource_version:
            meta["resourceVersion"] = resource_version
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": type_,
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }
        if resource_version:
            answer = await self._call(
                what, self._core.replace_namespaced_secret, name, namespace, body
            )
        else:
            answer = await self._call(what, self._core.create_namespaced_secret, namespace, body)
        if answer.status == 409:
            raise TemporaryError(f"{what}: changed concurrently; re-read and try again")
        self._expect(what, answer)

    # -------------------------------------------------------------- RBAC

    def _rbac_methods(self, kind: str) -> tuple[bool, str]:
        """(namespaced, method stem) for one of :data:`RBAC_KINDS`."""
        stems = {
            "Role": (True, "role"),
            "ClusterRole": (False, "cluster_role"),
            "RoleBinding": (True, "role_binding"),
            "ClusterRoleBinding": (False, "cluster_role_binding"),
        }
        if kind not in stems:
            raise PermanentError(f"unknown RBAC kind {kind!r}; expected one of {RBAC_KINDS}")
        return stems[kind]

    async def _rbac_call(
        self, verb: str, kind: str, name: str, namespace: str | None, body: Json | None = None
    ) -> tuple[str, Answer]:
        """(what, answer) of ``verb`` (get, create, replace, delete) on one RBAC object: the
        generated method for the kind's scope, with the arguments that scope takes."""
        namespaced, stem = self._rbac_methods(kind)
        where = f"{namespace}/{name}" if namespace else name
        what = f'{verb} {kind} "{where}"'
        method = "read" if verb == "get" else verb
        args: list[Any] = [] if verb == "create" else [name]
        if namespaced:
            args.append(namespace)
        if body is not None:
            args.append(body)
        call = getattr(
            self._rbac, f"{method}_namespaced_{stem}" if namespaced else f"{method}_{stem}"
        )
        return what, await self._call(what, call, *args)

    async def list_rbac(self, kind: str, label_selector: str | None = None) -> list[RbacObject]:
        """Every object of ``kind`` (in all namespaces), optionally filtered by labels."""
        namespaced, stem = self._rbac_methods(kind)
        method = getattr(
            self._rbac, f"list_{stem}_for_all_namespaces" if namespaced else f"list_{stem}"
        )
        what = f"list {kind}s"
        kwargs = {"label_selector": label_selector} if label_selector else {}
        body = self._expect(what, await self._call(what, method, **kwargs))
        return [rbac_from_json(kind, item) for item in body.get("items") or []]

    async def get_rbac(
        self, kind: str, name: str, namespace: str | None = None
    ) -> RbacObject | None:
        what, answer = await self._rbac_call("get", kind, name, namespace)
        if answer.status == 404:
            return None
        return rbac_from_json(kind, self._expect(what, answer))

    def _rbac_body(
        self,
        kind: str,
        name: str,
        namespace: str | None,
        labels: dict[str, str],
        content: dict[str, Any],
        resource_version: str | None = None,
    ) -> Json:
        meta: Json = {"name": name, "labels": dict(labels)}
        if namespace is not None:
            meta["namespace"] = namespace
        if resource_version:
            meta["resourceVersion"] = resource_version
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": kind,
            "metadata": meta,
            **content,
        }

    async def create_rbac(
        self,
        kind: str,
        name: str,
        namespace: str | None,
        labels: dict[str, str],
        content: dict[str, Any],
    ) -> RbacObject:
        body = self._rbac_body(kind, name, namespace, labels, content)
        what, answer = await self._rbac_call("create", kind, name, namespace, body)
        if answer.status == 409:
            raise TemporaryError(f"{what}: it already exists (created concurrently); re-read")
        return rbac_from_json(kind, self._expect(what, answer))

    async def replace_rbac(
        self,
        kind: str,
        name: str,
        namespace: str | None,
        labels: dict[str, str],
        content: dict[str, Any],
        *,
        resource_version: str,
    ) -> RbacObject | None:
        """Replace the object as read at ``resource_version``. None if it is gone; a concurrent
        change (409) raises :class:`TemporaryError` so the caller re-reads."""
        body = self._rbac_body(kind, name, namespace, labels, content, resource_version)
        what, answer = await self._rbac_call("replace", kind, name, namespace, body)
        if answer.status == 404:
            return None
        if answer.status == 409:
            raise TemporaryError(f"{what}: changed concurrently; re-read and try again")
        return rbac_from_json(kind, self._expect(what, answer))

    async def delete_rbac(self, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete the object. False if it was already gone."""
        what, answer = await self._rbac_call("delete", kind, name, namespace)
        if answer.status == 404:
            return False
        self._expect(what, answer)
        return True
