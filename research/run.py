"""The research scripts that reproduce ``docs/results.md`` and ``docs/evaluation.md``, behind
one entry point (``research/README.md`` says what each one measures)::

    python research/run.py compare-quad [flags]            # the quad comparison
    python research/run.py diagnose-quad ADAPTER [flags]   # where an adapter keeps each concept
    python research/run.py sw2-sources --adapter ADAPTER   # where an adapter's SW2 comes from

``python research/run.py COMMAND --help`` lists a command's flags. Every score comes from
``ctxadapter.evaluation``; the scripts only train, choose what to score and write tables.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMANDS = {
    "compare-quad": "compare_quad",
    "diagnose-quad": "diagnose_quad",
    "sw2-sources": "sw2_sources",
}
"""Command -> the script (a module of this folder) whose ``main(argv)`` runs it."""


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    for folder in (HERE.parent, HERE):  # run from a checkout without installing
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main()
