#!/usr/bin/env python3
"""healer node agent: tells healer how this machine is doing, and asks before rebooting it.

The command line of the agent (the modules beside this one do the work). Python 3.9+ standard
library only; it uses paho-mqtt when installed (Debian: python3-paho-mqtt, 1.x or 2.x) and a
small built-in MQTT 3.1.1 client otherwise. Installed by cloud-init as one file,
/usr/local/lib/healer/healer_agent.py (the package flattened into one script,
:mod:`healer.agent.bundle`), with systemd/healer-agent.service and
systemd/healer-agent-shutdown.service. Configuration: /etc/healer/agent.env (KEY=VALUE lines;
the process environment overrides the file). See docs/agent.md.

Commands::

    healer_agent.py run                       the service: booted, heartbeats, reboot-required,
                                              and arbitrated reboots (HEALER_AUTO_REBOOT)
    healer_agent.py heartbeat                 one heartbeat
    healer_agent.py booted                    reboot/booted
    healer_agent.py rebooting                 reboot/started (run by healer-agent-shutdown.service
                                              when the machine goes down for a reboot)
    healer_agent.py reboot-required           reboot/required
    healer_agent.py upgrade started|finished|failed [PACKAGE...]
                                              upgrade results (unattended-upgrades hook)
    healer_agent.py health CONDITION True|False|Unknown [--reason R] [--message M]
    healer_agent.py request-reboot [--wait SECONDS]
                                              ask healer; exit 0 if granted, 3 if not

Messages follow healer's MQTT contract v1 (docs/mqtt.md): ``<prefix>/<cluster>/<node>/<channel>``
with a JSON object carrying ``"v": 1`` and ``ts``, published at QoS 1. Reboot arbitration: the
agent subscribes to ``.../reboot-permit``, publishes ``{"v": 1, "id": ...}`` on
``.../reboot-request`` and reboots only on an answer with the same ``id`` and ``"granted": true``
received before its ``expiresAt``; a refusal's ``retryAfter`` says when to ask again, and no
answer within HEALER_PERMIT_TIMEOUT means ask again. It never reboots without a grant.

Exit codes: 0 done, 1 bad configuration or usage, 2 MQTT failure, 3 reboot not granted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from typing import Any

from healer.agent.config import DEFAULT_ENV_FILE, load_config
from healer.agent.errors import ConfigError, MqttError
from healer.agent.service import Agent
from healer.agent.system import shutdown_is_reboot

log = logging.getLogger("healer-agent")

EXIT_OK, EXIT_CONFIG, EXIT_MQTT, EXIT_REFUSED = 0, 1, 2, 3


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="healer_agent.py", description="healer node agent")
    parser.add_argument("--env-file", default=os.environ.get("HEALER_AGENT_ENV", DEFAULT_ENV_FILE))
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="the service")
    sub.add_parser("heartbeat")
    sub.add_parser("booted")
    sub.add_parser("rebooting", help="announce a reboot (healer-agent-shutdown.service)")
    sub.add_parser("reboot-required")
    upgrade = sub.add_parser("upgrade", help="report an upgrade (unattended-upgrades hook)")
    upgrade.add_argument("event", choices=["started", "finished", "failed"])
    upgrade.add_argument("packages", nargs="*")
    upgrade.add_argument("--message")
    health = sub.add_parser("health", help="report a node condition")
    health.add_argument("condition")
    health.add_argument("status", choices=["True", "False", "Unknown"])
    health.add_argument("--reason")
    health.add_argument("--message")
    request = sub.add_parser("request-reboot", help="ask healer for permission to reboot")
    request.add_argument("--wait", type=float, default=300.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s healer-agent %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(args.env_file)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    agent = Agent(config)
    try:
        return _dispatch(agent, args)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except MqttError as exc:
        log.error("MQTT: %s", exc)
        return EXIT_MQTT
    finally:
        agent.close()


def _dispatch(agent: Agent, args: argparse.Namespace) -> int:
    command = args.command
    if command == "run":
        import signal

        signal.signal(signal.SIGTERM, lambda *_: agent.stop())
        with contextlib.suppress(KeyboardInterrupt):
            agent.run()
        return EXIT_OK
    if command == "heartbeat":
        agent.send("heartbeat", {})
    elif command == "booted":
        agent.send("reboot", {"event": "booted"})
    elif command == "rebooting":
        if shutdown_is_reboot() is False:
            log.info("the machine is powering off, not rebooting: nothing to announce")
            return EXIT_OK
        agent.send("reboot", {"event": "started", "reason": "Shutdown"})
    elif command == "reboot-required":
        agent.send("reboot", {"event": "required", "reason": "RebootRequired"})
    elif command == "upgrade":
        fields: dict[str, Any] = {"event": args.event}
        if args.packages:
            fields["packages"] = args.packages[:512]
        if args.message:
            fields["message"] = args.message[:1024]
        agent.send("upgrade", fields)
    elif command == "health":
        fields = {"condition": args.condition, "status": args.status}
        if args.reason:
            fields["reason"] = args.reason[:128]
        if args.message:
            fields["message"] = args.message[:1024]
        agent.send("health", fields)
    elif command == "request-reboot":
        permit = agent.request_reboot(args.wait)
        print(json.dumps(permit, sort_keys=True))
        return EXIT_OK if permit.get("granted") is True else EXIT_REFUSED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
