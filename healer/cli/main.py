"""The entry point: parse, run the command, turn the errors an operator can fix into exit 2."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from healer.cli.parser import build_parser
from healer.errors import ConfigError

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"healer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `healer history | head`: the reader left; that is fine
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
