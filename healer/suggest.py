""" "Did you mean ...?": the closest known names to a mistyped one, for configuration keys and
the operator commands' cluster, pool and node names (difflib, standard library only)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# How many known names an error lists when none is close to the typed one.
LIST_AT_MOST = 8


def did_you_mean(name: str, known: Iterable[str], *, list_known: bool = True) -> str:
    """The tail of an error message: "; did you mean 'x'?" for the close matches (or the only
    known name), "; known: a, b, c" otherwise (unless ``list_known`` is false: the message
    lists them already), "" when nothing is known."""
    candidates = sorted(set(known))
    if not candidates:
        return ""
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    if not close and len(candidates) == 1:
        close = candidates
    if close:
        return f"; did you mean {' or '.join(repr(c) for c in close)}?"
    if not list_known:
        return ""
    shown = ", ".join(candidates[:LIST_AT_MOST])
    more = f" (and {len(candidates) - LIST_AT_MOST} more)" if len(candidates) > LIST_AT_MOST else ""
    return f"; known: {shown}{more}"
