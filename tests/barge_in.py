"""The one expectation every front door's barge-in test holds (talk, serve with and without the
browser's position reports, replay): the truncate never goes past the audio received for the
item, and it is within ``TOLERANCE_MS`` of what the sink really played."""

from __future__ import annotations

TOLERANCE_MS = 60


def assert_truncate_is_what_was_heard(audio_end_ms: int, received_ms: int, played_from_ms: float,
                                      played_to_ms: float | None = None) -> None:
    """``played_from_ms``..``played_to_ms``: what the sink played, as exactly as the test can tell."""
    played_to_ms = played_from_ms if played_to_ms is None else played_to_ms
    assert audio_end_ms <= received_ms, f"truncate {audio_end_ms} ms past the {received_ms} ms received"
    assert played_from_ms - TOLERANCE_MS <= audio_end_ms <= played_to_ms + TOLERANCE_MS, (
        f"truncate {audio_end_ms} ms, the sink played {played_from_ms:.0f}-{played_to_ms:.0f} ms")
