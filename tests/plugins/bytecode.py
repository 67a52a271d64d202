"""Bytecode caching for the suite's interpreters (docs/testing.md "Why the suite writes
__pycache__").

A run of the suite starts several hundred Python processes: the xdist workers, and in the tests
the daemon, the CLI and the lab as users start them. Where ``PYTHONDONTWRITEBYTECODE`` is set
(some machines set it for every process), none of them could reuse a compiled module: each would
compile healer from source again (about 0.6 s of CPU a process) and each worker would rewrite the
asserts of every test module again (about 9 s). Measured on two cores, that was a quarter of the
suite's CPU. So for the run the variable is dropped, before the workers start: every process
writes and reuses ``__pycache__`` (ignored by git), as Python does by default.
"""

from __future__ import annotations

import os
import sys

if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
    sys.dont_write_bytecode = False
