"""``healer plan``, ``healer apply`` and ``healer destroy``: the provisioning commands.

healer/cli/provision.py parses the arguments and calls these; they load the config, build each
cluster's provider plugin (libcloud calls run in its worker threads) and print one line per action.
Exit codes: 0 done (or, for ``plan``, no changes); 1 refused or failed; ``plan
--detailed-exitcode`` exits 2 when there are changes (and 1, not the usual 2, on a config error,
so that 2 means only "changes").
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from healer.cloud.machines import Provider
from healer.cloud.registry import load_provider
from healer.cloud.resources import LoadBalancer
from healer.config import ClusterConfig, HealerConfig, load_config
from healer.errors import ConfigError, HealerError
from healer.provisioning.apply import Inventory, apply, destroy, make_plan, plan_destroy
from healer.provisioning.kubeadm.endpoint import record_api_endpoint
from healer.provisioning.plan import Plan
from healer.provisioning.pools import UserData
from healer.telemetry.logs import configure

EXIT_CHANGES = 2


def _clusters(config: HealerConfig, name: str | None, path: str) -> list[ClusterConfig]:
    if name is None:
        return list(config.clusters)
    found = config.cluster(name)
    if found is None:
        names = ", ".join(c.name for c in config.clusters)
        raise ConfigError(f"{path}: no cluster named {name!r} (clusters: {names})")
    return [found]


def _provider(cluster: ClusterConfig, state_dir: Path) -> Provider:
    return load_provider(
        cluster.provider.plugin,
        cluster=cluster.name,
        options=cluster.provider.options,
        credentials=cluster.provider.credentials,
        state_dir=state_dir,
    )


async def _open(cluster: ClusterConfig, state_dir: Path) -> Provider:
    # Building a libcloud driver may call the cloud (GCE fetches its zone and a token): off the
    # event loop, like every other libcloud call.
    return await asyncio.to_thread(_provider, cluster, state_dir)


def _user_data(state_dir: Path) -> UserData:
    from healer.provisioning.userdata import render_user_data

    def render(cluster: ClusterConfig, pool: str, name: str) -> str:
        return render_user_data(cluster, pool, name, state_dir=state_dir)

    return render


def _print_plan(the_plan: Plan, out: TextIO) -> None:
    print(f"cluster {the_plan.cluster}:", file=out)
    if not the_plan.actions:
        print("  no changes: the cloud matches the config", file=out)
    for line in the_plan.lines():
        print(f"  {line}", file=out)


def run_plan(args: argparse.Namespace, *, config_path: str, state_dir: Path) -> int:
    detailed = bool(getattr(args, "detailed_exitcode", False))
    try:
        config = load_config(config_path)
        clusters = _clusters(config, args.cluster, config_path)
        # stdout carries the plan; only warnings and errors go to stderr.
        configure(config.log_format, level="WARNING")
    except ConfigError as exc:
        if detailed:
            print(f"healer: {exc}", file=sys.stderr)
            return 1
        raise

    async def main() -> bool:
        changes = False
        for cluster in clusters:
            provider = await _open(cluster, state_dir)
            try:
                _, _, the_plan = await make_plan(
                    cluster, provider, inventory=Inventory(state_dir, cluster.name)
                )
            finally:
                await provider.close()
            _print_plan(the_plan, sys.stdout)
            changes = changes or the_plan.changes
        return changes

    try:
        changes = asyncio.run(main())
    except HealerError as exc:
        print(f"healer plan: {exc}", file=sys.stderr)
        return 1
    return EXIT_CHANGES if detailed and changes else 0


def _record_endpoint(state_dir: Path, cluster: str, lb: LoadBalancer) -> None:
    if lb.address:
        record_api_endpoint(state_dir, cluster, lb.address, port=lb.port)


def run_apply(args: argparse.Namespace, *, config_path: str, state_dir: Path) -> int:
    config = load_config(config_path)
    clusters = _clusters(config, args.cluster, config_path)
    configure(config.log_format)  # progress events on stderr; the plan on stdout
    user_data = _user_data(state_dir)

    async def main() -> None:
        for cluster in clusters:
            provider = await _open(cluster, state_dir)
            try:
                result = await apply(
                    cluster,
                    provider,
                    user_data=user_data,
                    inventory=Inventory(state_dir, cluster.name),
                    on_plan=lambda p: _print_plan(p, sys.stdout),
                    on_load_balancer=functools.partial(_record_endpoint, state_dir, cluster.name),
                )
            finally:
                await provider.close()
            if result.plan.changes:
                made = ", ".join(m.name for m in result.created) or "none"
                print(f"  applied; machines created: {made}")
            if result.load_balancer is not None:
                lb = result.load_balancer
                print(f"  API endpoint: {lb.address}:{lb.port} ({len(lb.members)} members)")

    try:
        asyncio.run(main())
    except HealerError as exc:
        print(f"healer apply: {exc}", file=sys.stderr)
        return 1
    return 0


def run_destroy(
    args: argparse.Namespace,
    *,
    config_path: str,
    state_dir: Path,
    confirm: Callable[[str], str] = input,
    stdin_is_tty: Callable[[], bool] = lambda: sys.stdin.isatty(),
) -> int:
    config = load_config(config_path)
    (cluster,) = _clusters(config, args.cluster, config_path)
    configure(config.log_format)

    async def listing() -> Plan:
        provider = await _open(cluster, state_dir)
        try:
            return await plan_destroy(cluster.name, provider)
        finally:
            await provider.close()

    try:
        the_plan = asyncio.run(listing())
    except HealerError as exc:
        print(f"healer destroy: {exc}", file=sys.stderr)
        return 1
    _print_plan(the_plan, sys.stdout)
    if not the_plan.actions:
        Inventory(state_dir, cluster.name).forget()
        return 0
    if not args.yes:
        if not stdin_is_tty():
            print(
                "healer destroy: refusing without a terminal to confirm on; pass --yes",
                file=sys.stderr,
            )
            return 1
        answer = confirm(
            f"Delete these {len(the_plan.actions)} resources of cluster {cluster.name}? "
            f"Type the cluster name to confirm: "
        )
        if answer.strip() != cluster.name:
            print("healer destroy: not confirmed; nothing deleted", file=sys.stderr)
            return 1

    async def main() -> int:
        provider = await _open(cluster, state_dir)
        try:
            done = await destroy(
                cluster.name,
                provider,
                the_plan=the_plan,
                on_action=lambda a: print(f"  deleted {a.kind} {a.name}"),
            )
        finally:
            await provider.close()
        return len(done)

    try:
        count = asyncio.run(main())
    except HealerError as exc:
        print(f"healer destroy: {exc}", file=sys.stderr)
        return 1
    Inventory(state_dir, cluster.name).forget()
    print(f"  destroyed {count} resources of cluster {cluster.name}")
    return 0
