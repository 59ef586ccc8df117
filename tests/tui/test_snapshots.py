"""Snapshot of the inspect screen (pytest-textual-snapshot), fed fixed monitor events.

After an intended change of the screen: ``python -m pytest tests/tui/test_snapshots.py --snapshot-update``
and look at the new SVG under ``tests/tui/__snapshots__/`` before committing it.
"""

from __future__ import annotations

from typing import Any

from voicerelay.tui.demo import EVENTS, URL
from voicerelay.tui.inspect_app import InspectApp


def test_inspect_screen(snap_compare: Any) -> None:
    app = InspectApp(URL, connect=False)

    async def feed(pilot: Any) -> None:
        for name, data in EVENTS:
            await app.feed(name, data)
        await pilot.pause(0.2)

    assert snap_compare(app, run_before=feed, terminal_size=(130, 34))
