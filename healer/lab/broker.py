"""The lab's zero-setup MQTT broker: amqtt running inside the lab's own event loop.

Owns the amqtt configuration. What amqtt 0.12 needs to behave like the broker healer expects:

* It speaks MQTT 3.1.1 only, so clients must use protocol ``"3.1.1"``.
* Listeners are a mapping with a required ``"default"`` entry (``{"type": "tcp", "bind":
  "host:port"}``); binding port 0 works (it is ``asyncio.start_server``), and the bound port is
  read back from the listener's server socket.
* Authentication is a plugin. With the stock ``AnonymousAuthPlugin`` at
  ``allow_anonymous: True`` every session is marked anonymous, *even one that sends a user
  name*, and amqtt neither queues QoS 1 messages for an anonymous session while it is offline
  nor keeps the session after it disconnects. So the lab broker sets ``allow_anonymous: False``:
  any client that presents a user name is let in (the password is not checked; the broker only
  listens on loopback) and its persistent session works. Clients with no user name are refused.
* Sessions live in memory: they survive client reconnects, not a restart of this broker.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from amqtt.broker import Broker

_AMQTT_LOGGERS: Final = ("amqtt", "transitions")


class EmbeddedBroker:
    """An in-process MQTT 3.1.1 broker for the lab and tests; clients must send a user name."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._requested_port = port
        self._broker: Broker | None = None
        self._port: int | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The port actually bound (useful with ``port=0``); only valid after :meth:`start`."""
        if self._port is None:
            raise RuntimeError("EmbeddedBroker.port read before start()")
        return self._port

    async def start(self) -> None:
        if self._broker is not None:
            raise RuntimeError("EmbeddedBroker already started")
        # amqtt logs every connection and packet at INFO; the lab's output is about nodes.
        for name in _AMQTT_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        broker = Broker(self._config())
        await broker.start()
        self._broker = broker
        self._port = _bound_port(broker)

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        self._port = None
        if broker is not None:
            await broker.shutdown()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _config(self) -> dict[str, Any]:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{self._requested_port}"}},
            # Only the auth plugin: the default set also has packet/event loggers and a $SYS
            # publisher the lab does not need. See the module docstring for allow_anonymous.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False},
            },
        }


def _bound_port(broker: Broker) -> int:
    # amqtt keeps no record of the port it got for ":0"; the asyncio server does.
    server = broker._servers["default"].instance
    sockets = getattr(server, "sockets", None) or ()
    for sock in sockets:
        return int(sock.getsockname()[1])
    raise RuntimeError("amqtt started but its 'default' listener has no socket")
