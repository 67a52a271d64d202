"""A provider wrapper that times every call and counts the failures, for any plugin alike."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from healer.cloud.machines import Machine, MachineRequest, Provider
from healer.errors import TemporaryError
from healer.telemetry import metrics


class MeteredProvider:
    """A :class:`~healer.cloud.machines.Provider` that times every call and counts the failures.

    Wrapping at the plugin boundary measures every plugin the same way without touching them.
    Anything else (a plugin's own attributes) is passed through.
    """

    def __init__(self, inner: Provider) -> None:
        self._inner = inner
        self.name = inner.name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)

    def __repr__(self) -> str:
        return f"MeteredProvider({self._inner!r})"

    async def _timed(self, operation: str, call: Any) -> Any:
        started = time.monotonic()
        try:
            return await call
        except TemporaryError:
            metrics.PROVIDER_ERRORS.labels(self.name, operation, "temporary").inc()
            raise
        except Exception:
            metrics.PROVIDER_ERRORS.labels(self.name, operation, "permanent").inc()
            raise
        finally:
            metrics.PROVIDER_SECONDS.labels(self.name, operation).observe(
                time.monotonic() - started
            )

    async def create_machine(self, request: MachineRequest) -> Machine:
        machine: Machine = await self._timed("create_machine", self._inner.create_machine(request))
        return machine

    async def destroy_machine(self, machine: Machine) -> bool:
        return bool(await self._timed("destroy_machine", self._inner.destroy_machine(machine)))

    async def get_machine(self, name: str) -> Machine | None:
        found: Machine | None = await self._timed("get_machine", self._inner.get_machine(name))
        return found

    async def list_machines(self, tags: Mapping[str, str]) -> list[Machine]:
        found: list[Machine] = await self._timed("list_machines", self._inner.list_machines(tags))
        return found

    async def close(self) -> None:
        await self._inner.close()
