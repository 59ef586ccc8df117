"""Snapshots of the two screens (pytest-textual-snapshot), fed fixed data from ``voicerelay.tui.demo``.

After an intended change of the screen: ``python -m pytest tests/tui/test_snapshots.py --snapshot-update``
and look at the new SVG under ``tests/tui/__snapshots__/`` before committing it.
"""

from __future__ import annotations

from typing import Any

from voicerelay.tui.demo import EVENTS, URL, show_talk
from voicerelay.tui.inspect_app import InspectApp
from voicerelay.tui.talk_app import TalkApp


def test_inspect_screen(snap_compare: Any) -> None:
    app = InspectApp(URL, connect=False)

    async def feed(pilot: Any) -> None:
        for name, data in EVENTS:
            await app.feed(name, data)
        await pilot.pause(0.2)

    assert snap_compare(app, run_before=feed, terminal_size=(160, 34))  # every column of the table


def test_talk_screen(snap_compare: Any) -> None:
    app = TalkApp(None)

    async def show(pilot: Any) -> None:
        show_talk(app.view)
        await pilot.pause(0.2)

    assert snap_compare(app, run_before=show, terminal_size=(130, 34))
