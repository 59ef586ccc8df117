"""The retry policy of the whole project: exponential backoff with jitter. Pure, no I/O.

Retry ``n`` (1, 2, ...) waits ``base * 2**(n-1)`` seconds, at most ``cap``, scaled by a random
factor in ``[1 - jitter, 1]`` so that many clients that failed together do not retry in step.
The upstream connection (:mod:`voicerelay.upstream`) and ``GatewayClient`` both wait this way.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["backoff_delay", "backoff_delays"]


def backoff_delay(attempt: int, base: float, cap: float, jitter: float = 0.5,
                  rand: Callable[[], float] = random.random) -> float:
    """The wait before retry ``attempt`` (1, 2, ...): ``min(cap, base * 2**(attempt-1))``, times a
    random factor in ``[1 - jitter, 1]`` (``rand`` returns a number in ``[0, 1)``)."""
    delay = min(cap, base * 2.0 ** min(max(0, attempt - 1), 30))
    return delay * (1.0 - jitter * rand())


def backoff_delays(attempts: int, base: float = 0.25, cap: float = 2.0, jitter: float = 0.5,
                   rand: Callable[[], float] = random.random) -> list[float]:
    """The waits before retries 1 to ``attempts``, drawn now."""
    return [backoff_delay(n, base, cap, jitter, rand) for n in range(1, attempts + 1)]
