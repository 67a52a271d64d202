"""The ``lab`` provider plugin: healer's provider contract over the SQLite lab cloud.

Machines live in ``<state_dir>/lab-cloud.sqlite``; a test harness or the lab simulator can open the
same file with :class:`~providers.lab.driver.LabNodeDriver` to crash machines or stage outages
while the daemon runs.

Options (all optional): ``max_concurrency`` (worker threads, default 4). No credentials.

It also builds networks, subnets, firewalls and load balancers (:mod:`providers.lab.infra_backend`), so
``healer apply`` can be tried end to end without a cloud.

Besides the :class:`~healer.cloud.machines.Provider` contract it has both optional capabilities:
:class:`~healer.cloud.machines.PowerControl` (fencing powers the machine off) and
:class:`~healer.cloud.machines.CapacityPreflight` (the lab cloud's machine quota, see
``LabNodeDriver.ex_set_quota``), so the lab exercises both the fencing and the surge order.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from libcloud.compute.base import NodeDriver

from healer.cloud.machines import CapacityCheck, Machine, MachineRequest
from healer.cloud.resources import Capabilities
from healer.config import SecretRef
from healer.errors import ConfigError, ProviderError
from providers.driver_provider import DriverProvider
from providers.lab import capabilities_for
from providers.lab.dialect import LabDialect
from providers.lab.driver import DB_FILENAME, LabNodeDriver
from providers.lab.infra_backend import LabInfraBackend

_OPTIONS = {"max_concurrency"}


class LabProvider(DriverProvider):
    def __init__(
        self,
        *,
        cluster: str,
        options: Mapping[str, Any],
        credentials: Mapping[str, SecretRef],
        state_dir: Path,
    ) -> None:
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ConfigError(
                f"provider 'lab': unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(_OPTIONS))}"
            )
        if credentials:
            raise ConfigError("provider 'lab': takes no credentials; remove provider.credentials")
        workers = options.get("max_concurrency", 4)
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ConfigError("provider 'lab': option max_concurrency must be an integer >= 1")
        self.db_path = Path(state_dir) / DB_FILENAME
        path = self.db_path
        super().__init__(
            name="lab",
            cluster=cluster,
            make_driver=lambda: LabNodeDriver(key=path),
            dialect=LabDialect(),
            max_workers=workers,
        )
        self.use_infra(LabInfraBackend())

    @classmethod
    def capabilities_for(cls, options: Mapping[str, Any]) -> Capabilities:
        """What the plugin builds, known without a call: everything, recorded in the lab."""
        return capabilities_for(options)

    # -- optional capabilities ----------------------------------------------------------------

    async def power_off_machine(self, machine: Machine) -> bool:
        op = f"power_off_machine({machine.name}, id={machine.id})"
        self.check_cluster(op, machine)
        async with self.lock(f"id:{machine.id}"):
            return await self.run_blocking(op, self._power_off_sync, machine)

    def _power_off_sync(self, driver: NodeDriver, op: str, machine: Machine) -> bool:
        node = self.live_node(driver, op, machine)
        if node is None:
            return False
        if str(getattr(node.state, "value", node.state)) == "stopped":
            return False
        driver.stop_node(node)
        again = LabDialect().get_node(driver, machine.id)
        state = None if again is None else str(getattr(again.state, "value", again.state))
        if state not in ("stopped", "terminated"):
            raise ProviderError(f"provider {self.name}: {op}: the machine is {state}, not stopped")
        return True

    async def check_capacity(self, request: MachineRequest, count: int = 1) -> CapacityCheck:
        usage = await self.run_blocking(
            f"check_capacity({request.name})", lambda driver, _op: driver.ex_quota_usage()
        )
        quota, used = usage["quota"], int(usage["used"] or 0)
        if quota is None:
            return CapacityCheck(ok=True, message=f"no machine quota ({used} in use)")
        free = max(0, int(quota) - used)
        if free >= count:
            return CapacityCheck(
                ok=True, message=f"{used} of {quota} machines in use", available=free
            )
        return CapacityCheck(
            ok=False,
            reason="QuotaExceeded",
            message=f"{used} of {quota} machines in use; {count} more do not fit",
            available=free,
        )
