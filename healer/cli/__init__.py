"""The ``healer`` command: a light parser (:mod:`healer.cli.parser`) and one module per command
family, each imported only when its command runs, so ``healer --help`` loads neither the
Kubernetes client nor libcloud.

Commands that inspect or steer a running daemon work on the state database it shares
(``--state-dir`` or HEALER_STATE_DIR), so they need no socket and work while it is down too.
"""
