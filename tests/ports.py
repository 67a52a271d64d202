"""Free loopback ports for the daemons the tests start: the lab's helper (healer/lab/ports.py says
how a port is kept from every other socket until the daemon binds it). Use it for every port a
test hands to another process."""

from __future__ import annotations

from healer.lab.ports import LOOPBACK, free_port

__all__ = ["LOOPBACK", "free_port"]
