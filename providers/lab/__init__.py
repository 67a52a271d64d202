"""The lab cloud: a SQLite-backed libcloud driver and the ``lab`` provider plugin over it.

Importing this package registers the driver with libcloud as ``healer_lab``, so
``get_driver("healer_lab")`` (and the generic ``libcloud`` plugin with ``driver: healer_lab``)
finds it. Registration is idempotent: importing twice, or after someone else registered it, is fine.
"""

from __future__ import annotations

from libcloud.compute.providers import DRIVERS, set_driver

from providers.lab.driver import DB_FILENAME, LAB_DRIVER_NAME, LabNodeDriver

__all__ = ["DB_FILENAME", "LAB_DRIVER_NAME", "LabNodeDriver", "register"]


def register() -> None:
    """Make ``get_driver("healer_lab")`` return :class:`LabNodeDriver`."""
    if LAB_DRIVER_NAME not in DRIVERS:
        # libcloud's type comments say module and class objects; it actually wants their names.
        set_driver(LAB_DRIVER_NAME, "providers.lab.driver", "LabNodeDriver")  # type: ignore[arg-type]


register()
