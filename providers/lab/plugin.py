"""The ``lab`` provider plugin: healer's provider contract over the SQLite lab cloud.

Machines live in ``<state_dir>/lab-cloud.sqlite``; a test harness or the lab simulator can open the
same file with :class:`~providers.lab.driver.LabNodeDriver` to crash machines or stage outages
while the daemon runs.

Options (all optional): ``max_concurrency`` (worker threads, default 4). No credentials.

It also builds networks, subnets, firewalls and load balancers (:mod:`providers.lab.infra`), so
``healer apply`` can be tried end to end without a cloud.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from healer.config import SecretRef
from healer.errors import ConfigError
from providers.dialects import LabDialect
from providers.driver_provider import DriverProvider
from providers.lab.driver import DB_FILENAME, LabNodeDriver
from providers.lab.infra import LabInfraBackend

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
