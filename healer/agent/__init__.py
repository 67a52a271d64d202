"""The node agent: a separate program that runs on every machine, beside the standard library and
paho-mqtt only; it imports nothing else from healer (an import-linter contract keeps it so).

Its modules: :mod:`.healer_agent` (the command line, the entry point), :mod:`.config` (the env
file), :mod:`.service` (the messages and the arbitrated reboots), :mod:`.transport` with
:mod:`.paho_mqtt` and :mod:`.builtin_mqtt` (MQTT), :mod:`.system` (commands and systemd), and
:mod:`.bundle`, which packs them into the one file a machine runs.
"""
