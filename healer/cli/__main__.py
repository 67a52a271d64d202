"""``python -m healer.cli``: the same as the ``healer`` console script."""

import sys

from healer.cli.main import main

sys.exit(main())
