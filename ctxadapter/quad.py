"""Transitional alias of ``ctxadapter.data.quad``, where the quad dataset now lives.

Kept only while ``ctxadapter/training.py`` and ``benchmarks/`` still import ``ctxadapter.quad``
(issue 14); remove it once they import ``ctxadapter.data.quad``. ``import ctxadapter.quad``
returns the ``ctxadapter.data.quad`` module itself, so there is one set of names and one state.
"""

import sys

from .data import quad as _quad

sys.modules[__name__] = _quad
