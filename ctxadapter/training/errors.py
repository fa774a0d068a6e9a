"""How the training scripts end on bad input: one line, not a traceback per process."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

USER_ERRORS = (ValueError, OSError, FloatingPointError)
"""What bad flags, data, files, Hub access or a diverged run raise."""


@contextmanager
def one_line_errors(script: str) -> Iterator[None]:
    """End the script on a ``USER_ERRORS`` exception raised in the ``with`` block: print
    ``"<script>: error: <message>"`` to stderr (on the first process only, as ``RANK`` says)
    and exit with status 1, without a traceback. Other exceptions (bugs) keep theirs."""
    try:
        yield
    except USER_ERRORS as error:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{script}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
