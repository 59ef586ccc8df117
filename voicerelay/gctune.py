"""The garbage collector of a process that voicerelay owns and that serves many sessions
(``serve``, ``proxy``).

What start-up loaded lives as long as the process: it is frozen out of the collector's full
passes, which stop every session while they run. The young generation is collected less often
than the default of 700 net allocations: the audio path allocates a lot that lives briefly, and
each collection pauses every session at once (at 80 gateway sessions, tens of milliseconds with
the defaults). ``benchmarks/gateway_load.py`` and ``benchmarks/proxy_overhead.py`` measure it.
Never applied to a process that only hosts voicerelay (a gateway mounted in someone's app).
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "settle_for_serving"]

YOUNG_THRESHOLD = 10_000


def settle_for_serving() -> None:
    """Freeze what is alive now and raise the young generation's threshold (see the module docstring)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
