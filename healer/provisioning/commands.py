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
import contextlib
import functools
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from healer.cloud.machines import Provider
from healer.cloud.registry import load_provider
from healer.cloud.resources import LoadBalancer
from healer.config import ClusterConfig, HealerConfig, load_config
from healer.errors import ConfigError, HealerError
from healer.provisioning.apply import Inventory, apply, destroy, make_plan, plan_destroy
from healer.provisioning.keydelivery import KeyDelivery
from healer.provisioning.kubeadm.endpoint import record_api_endpoint
from healer.provisioning.plan import Change, Plan
from healer.provisioning.pools import UserData
from healer.suggest import did_you_mean
from healer.telemetry.logs import configure

# `apply`/`destroy` not confirmed: the exit status of healer.cli.exits.NOT_CONFIRMED (the CLI sits
# above this layer; tests/test_provisioning_confirm.py keeps the two equal).
NOT_CONFIRMED = 5

EXIT_CHANGES = 2


def _clusters(config: HealerConfig, name: str | None, path: str) -> list[ClusterConfig]:
    if name is None:
        return list(config.clusters)
    found = config.cluster(name)
    if found is None:
        names = ", ".join(c.name for c in config.clusters)
        hint = did_you_mean(name, [c.name for c in config.clusters], list_known=False)
        raise ConfigError(f"{path}: no cluster named {name!r} (clusters: {names}){hint}")
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


# How the summary line names each kind of change; any other kind is named after its Change.
_SUMMARY_WORDS = {
    Change.CREATE: "to create",
    Change.UPDATE: "to change",
    Change.DELETE: "to destroy",
}


def summary(the_plan: Plan) -> str:
    """One line counting the plan's actions by kind: ``3 to create, 1 to change, 0 to destroy``
    (a conflict or any other kind of change is counted after them when there is one)."""
    counts = Counter(a.change for a in the_plan.actions)
    parts = [f"{counts.pop(change, 0)} {words}" for change, words in _SUMMARY_WORDS.items()]
    parts += [f"{n} {change.name.lower().replace('_', ' ')}" for change, n in counts.items()]
    return ", ".join(parts)


@contextlib.contextmanager
def read_only_view(state_dir: Path) -> Iterator[Path]:
    """A throwaway directory showing what ``state_dir`` holds, for commands that must write
    nothing there (``plan``): a provider that keeps its cloud in the state directory (the lab's
    ``lab-cloud.sqlite``) reads the real files through symbolic links, and whatever it would
    create (a missing database, the state directory itself) lands in the throwaway directory.
    SQLite resolves the links, so its WAL side files stay beside the real database."""
    with tempfile.TemporaryDirectory(prefix="healer-plan-") as tmp:
        view = Path(tmp)
        try:
            entries = list(state_dir.iterdir()) if state_dir.is_dir() else []
        except OSError as exc:
            raise ConfigError(f"{state_dir}: cannot read the state directory: {exc}") from exc
        for entry in entries:
            (view / entry.name).symlink_to(entry.resolve())
        yield view


def _confirmed(
    *,
    command: str,
    yes: bool,
    question: str,
    answer: str,
    confirm: Callable[[str], str],
    stdin_is_tty: Callable[[], bool],
) -> bool:
    """``--yes``, or ``answer`` typed back at a terminal; False (with the reason on stderr) when
    there is no terminal to ask on or the answer differs."""
    if yes:
        return True
    if not stdin_is_tty():
        print(
            f"healer {command}: refusing to change anything without a terminal to confirm on; "
            "review `healer plan`, then pass --yes",
            file=sys.stderr,
        )
        return False
    if confirm(question).strip() != answer:
        print(f"healer {command}: not confirmed; nothing changed", file=sys.stderr)
        return False
    return True


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
            with read_only_view(state_dir) as view:
                provider = await _open(cluster, view)
                try:
                    _, _, the_plan = await make_plan(
                        cluster, provider, inventory=Inventory(state_dir, cluster.name)
                    )
                finally:
                    await provider.close()
            _print_plan(the_plan, sys.stdout)
            if the_plan.changes:
                print(f"  plan: {summary(the_plan)}")
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


class _NotConfirmed(Exception):
    """The operator did not confirm the plan ``apply`` showed (the reason is on stderr)."""


def run_apply(
    args: argparse.Namespace,
    *,
    config_path: str,
    state_dir: Path,
    confirm: Callable[[str], str] = input,
    stdin_is_tty: Callable[[], bool] = lambda: sys.stdin.isatty(),
) -> int:
    config = load_config(config_path)
    clusters = _clusters(config, args.cluster, config_path)
    configure(config.log_format)  # progress events on stderr; the plan on stdout
    user_data = _user_data(state_dir)

    def review(the_plan: Plan) -> None:
        """Show the plan and its summary; changes go ahead only once confirmed (or --yes)."""
        _print_plan(the_plan, sys.stdout)
        if not the_plan.changes or the_plan.conflicts:
            return  # nothing to do, or apply refuses it anyway
        print(f"  plan: {summary(the_plan)}", flush=True)
        if not _confirmed(
            command="apply",
            yes=bool(getattr(args, "yes", False)),
            question=f"Apply these changes to cluster {the_plan.cluster}? Type yes to go on: ",
            answer="yes",
            confirm=confirm,
            stdin_is_tty=stdin_is_tty,
        ):
            raise _NotConfirmed

    async def main() -> None:
        for cluster in clusters:
            provider = await _open(cluster, state_dir)
            try:
                result = await apply(
                    cluster,
                    provider,
                    user_data=user_data,
                    inventory=Inventory(state_dir, cluster.name),
                    on_plan=review,
                    on_load_balancer=functools.partial(_record_endpoint, state_dir, cluster.name),
                    keys=KeyDelivery(state_dir),
                )
            finally:
                await provider.close()
            if result.plan.changes:
                made = ", ".join(m.name for m in result.created) or "none"
                print(f"  applied; machines created: {made}")
            if result.keys_delivered:
                print(f"  control-plane keys pushed to: {', '.join(result.keys_delivered)}")
            if result.load_balancer is not None:
                lb = result.load_balancer
                print(f"  API endpoint: {lb.address}:{lb.port} ({len(lb.members)} members)")

    try:
        asyncio.run(main())
    except _NotConfirmed:
        return NOT_CONFIRMED
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
    # Each deletion is one "deleted ..." line on stdout: the providers' own events would say it
    # a second time, so only warnings and errors are logged.
    configure(config.log_format, level="WARNING")

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
    if not _confirmed(
        command="destroy",
        yes=args.yes,
        question=f"Delete these {len(the_plan.actions)} resources of cluster {cluster.name}? "
        "Type the cluster name to confirm: ",
        answer=cluster.name,
        confirm=confirm,
        stdin_is_tty=stdin_is_tty,
    ):
        return NOT_CONFIRMED

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
