"""Free loopback ports for the processes the lab starts (its etcd members) and the tests start
(mosquitto, etcd, kube-apiserver, PostgreSQL, a `healer run`'s listeners).

The port is picked here and a child process binds it later, so in between anything else on the
machine could take it: another lab or test run, any process's outgoing connection. A plain
``bind(("127.0.0.1", 0))`` then ``close()`` leaves the port free for all of those.
:func:`free_port` instead leaves it in TIME_WAIT (a connection to it, closed from the listening
side first): the kernel hands no TIME_WAIT port out again for automatic binds or outgoing
connections (for about a minute), while a server that binds it explicitly with ``SO_REUSEADDR``
(Go's and asyncio's listeners, mosquitto, PostgreSQL: all of them) gets it at once.
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A port on ``host`` that nothing listens on and that the kernel will not hand out again
    for about a minute; bind it with ``SO_REUSEADDR``."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, 0))
        listener.listen(1)
        port = int(listener.getsockname()[1])
        client = socket.create_connection((host, port), timeout=5)
        accepted, _ = listener.accept()
        # The accepted side (bound to ``port``) closes first, so it is the one left in
        # TIME_WAIT; the client's own ephemeral port is released at once.
        accepted.close()
        client.close()
    return port
