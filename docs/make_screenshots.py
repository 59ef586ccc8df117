"""Write the README's pictures of the two screens (Textual's own SVG export), from fixed data:

    python docs/make_screenshots.py      # docs/inspect.svg and docs/talk.svg
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from voicerelay.tui.demo import EVENTS, URL, show_talk
from voicerelay.tui.inspect_app import InspectApp
from voicerelay.tui.talk_app import TalkApp

HERE = Path(__file__).resolve().parent


async def inspect_screen() -> None:
    app = InspectApp(URL, connect=False)
    async with app.run_test(size=(130, 34)) as pilot:
        for name, data in EVENTS:
            await app.feed(name, data)
        await pilot.pause(0.2)
        app.save_screenshot(filename="inspect.svg", path=str(HERE))
    print(f"wrote {HERE / 'inspect.svg'}")


async def talk_screen() -> None:
    app = TalkApp(None)
    async with app.run_test(size=(130, 34)) as pilot:
        show_talk(app.view)
        await pilot.pause(0.2)
        app.save_screenshot(filename="talk.svg", path=str(HERE))
    print(f"wrote {HERE / 'talk.svg'}")


if __name__ == "__main__":
    asyncio.run(inspect_screen())
    asyncio.run(talk_screen())
