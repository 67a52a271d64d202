"""The entry point: parse, run the command, turn the errors an operator can fix into exit 2.

Exit codes: 0 done; 1 an unexpected error (a traceback: systemd restarts the daemon); 2 the
configuration or the state is unusable (a bad field, a damaged or unreadable state database,
another daemon on the state directory; a command's write the state database did not take, on a
full disk or a read-only file): the message names the file and what to do, and the
unit does not restart on it (``RestartPreventExitStatus=2``); 130 interrupted. Some commands add
their own (``healer remediate``: 3, no daemon answered).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from healer.cli.parser import build_parser
from healer.errors import ConfigError, StateError, StateUnwritable

EXIT_USAGE = 2  # also argparse's, for a command line it cannot parse


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, StateError, StateUnwritable) as exc:
        print(f"healer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `healer history | head`: the reader left; that is fine
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
