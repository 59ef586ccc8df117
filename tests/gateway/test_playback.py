"""BrowserPlayback, pure: a fake clock, no sockets."""

from __future__ import annotations

from pytest import approx

from voicerelay.conversation import Playback
from voicerelay.gateway.playback import ITEMS_KEPT, BrowserPlayback
from voicerelay.protocol.session import PlayAudio


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms / 1000


def audio(item_id: str, ms: int) -> PlayAudio:
    return PlayAudio(b"\x00\x00" * 24 * ms, "resp_1", item_id)


def make() -> tuple[BrowserPlayback, Clock]:
    clock = Clock()
    return BrowserPlayback(clock), clock


def test_it_is_a_playback() -> None:
    assert isinstance(BrowserPlayback(), Playback)


def test_audio_faster_than_real_time_plays_from_the_first_delta() -> None:
    playback, clock = make()
    for _ in range(10):
        playback.feed(audio("a", 100))  # 1 s of audio in 10 ms
        clock.advance(1)
    assert playback.received_ms("a") == 1000
    assert playback.played_ms("a") == 10  # min(received, (now - first delta) * 1000)
    assert playback.pending_ms() == approx(990)
    clock.advance(490)
    assert playback.played_ms("a") == 500 and playback.pending_ms() == approx(500)
    clock.advance(2000)
    assert playback.played_ms("a") == 1000 and playback.pending_ms() == approx(0)  # never above what was received


def test_audio_slower_than_real_time_leaves_gaps_the_estimate_does_not_count() -> None:
    playback, clock = make()
    playback.feed(audio("a", 100))
    clock.advance(300)  # the browser ran dry for 200 ms
    playback.feed(audio("a", 100))
    assert playback.played_ms("a") == 100
    clock.advance(50)
    assert playback.played_ms("a") == 150 and playback.pending_ms() == approx(50)


def test_items_play_back_to_back() -> None:
    playback, clock = make()
    playback.feed(audio("a", 400))
    playback.feed(audio("b", 400))  # queued behind a
    clock.advance(500)
    assert playback.played_ms("a") == 400 and playback.played_ms("b") == 100
    assert playback.pending_ms() == approx(300)
    assert playback.played_ms("nobody") == 0 and playback.received_ms("nobody") == 0


def test_a_reported_position_wins_clamped_to_what_was_received() -> None:
    playback, clock = make()
    playback.feed(audio("a", 1000))
    clock.advance(600)
    assert playback.report("a", 420.5)
    assert playback.played_ms("a") == 420  # the report, not the estimate (600)
    clock.advance(100)
    assert playback.played_ms("a") == 420  # the last word, until the next report
    assert playback.pending_ms() == approx(479.5)  # but the timeline plays on from the report
    assert playback.report("a", 5000)
    assert playback.played_ms("a") == 1000  # clamped
    assert not playback.report("unknown", 10) and playback.reports == 2


def test_a_report_re_anchors_the_items_queued_after_it() -> None:
    playback, clock = make()
    playback.feed(audio("a", 500))
    playback.feed(audio("b", 500))
    clock.advance(600)  # the estimate: a done, b at 100
    playback.report("a", 300)  # the browser started late: it is still in a
    assert playback.pending_ms() == approx(700)
    clock.advance(300)
    assert playback.played_ms("b") == 100  # b starts after a's last 200 ms
    clock.advance(600)
    assert playback.pending_ms() == approx(0) and playback.played_ms("b") == 500


def test_stop_freezes_what_was_played_and_empties_the_queue() -> None:
    playback, clock = make()
    playback.feed(audio("a", 1000))
    clock.advance(300)
    playback.stop()
    assert playback.pending_ms() == approx(0)
    clock.advance(1000)
    assert playback.played_ms("a") == 300 and playback.received_ms("a") == 1000
    playback.report("a", 280)  # the browser's word after the stop is final
    assert playback.played_ms("a") == 280 and playback.pending_ms() == approx(0)
    playback.feed(audio("b", 200))  # the next reply plays from now
    clock.advance(50)
    assert playback.played_ms("b") == 50 and playback.pending_ms() == approx(150)
    playback.finish()  # nothing to do for a browser
    assert playback.pending_ms() == approx(150)


def test_only_recent_items_are_remembered() -> None:
    playback, _ = make()
    for i in range(ITEMS_KEPT + 5):
        playback.feed(audio(f"item{i}", 10))
    assert playback.received_ms("item0") == 0
    assert playback.received_ms(f"item{ITEMS_KEPT + 4}") == 10
