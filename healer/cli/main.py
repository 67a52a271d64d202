"""The entry point: parse, run the command, turn the errors an operator can fix into exit 2.

The exit statuses of every command are one table, :mod:`healer.cli.exits` (``healer --help``
prints it; docs/operations.md explains it). A configuration or state the operator must fix
(ConfigError, StateError, StateUnwritable) is exit 2 with the message alone, no traceback:
the message names the file and what to do, and the unit does not restart on it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from healer.cli import exits
from healer.cli.parser import build_parser
from healer.errors import ConfigError, StateError, StateUnwritable
from healer.telemetry.lazylog import default_stream

EXIT_USAGE = exits.USAGE  # also argparse's, for a command line it cannot parse


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the command itself (a test calling main([...]) keeps its log set-up)
        default_stream(sys.stderr)  # the output is the answer; a stray log line goes to stderr
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    if args.no_color:
        # https://no-color.org: what healer starts (the lab's processes too) sees it as well.
        os.environ["NO_COLOR"] = "1"
    try:
        return int(args.func(args))
    except (ConfigError, StateError, StateUnwritable) as exc:
        print(f"healer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return exits.INTERRUPTED
    except BrokenPipeError:  # `healer history | head`: the reader left; that is fine
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
