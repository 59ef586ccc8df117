"""The project's one retry policy, with the random factor pinned."""

from __future__ import annotations

import pytest

from voicerelay import upstream
from voicerelay.backoff import backoff_delay, backoff_delays


def test_exponential_capped_and_jittered_down_by_at_most_jitter() -> None:
    no_luck = [backoff_delay(n, 0.5, 4.0, 0.5, rand=lambda: 0.0) for n in range(1, 6)]
    assert no_luck == [0.5, 1.0, 2.0, 4.0, 4.0]  # base * 2**(n-1), capped
    most_off = [backoff_delay(n, 0.5, 4.0, 0.5, rand=lambda: 1.0) for n in range(1, 6)]
    assert most_off == [0.25, 0.5, 1.0, 2.0, 2.0]  # scaled by 1 - jitter at the most
    assert backoff_delay(10_000, 0.5, 4.0, 0.0) == 4.0  # no overflow, and no jitter means no randomness
    assert backoff_delay(0, 0.5, 4.0, 0.0) == 0.5  # attempt 0 counts as the first
    for n in range(1, 8):
        assert 0.125 <= backoff_delay(n, 0.25, 2.0) <= min(2.0, 0.25 * 2 ** (n - 1))


def test_the_upstream_waits_by_the_same_policy() -> None:
    assert upstream.backoff_delays is backoff_delays
    assert backoff_delays(4, 0.25, 2.0, rand=lambda: 0.5) == pytest.approx([0.1875, 0.375, 0.75, 1.5])
    assert len(backoff_delays(3)) == 3 and all(0.125 <= d <= 1.0 for d in backoff_delays(3))
