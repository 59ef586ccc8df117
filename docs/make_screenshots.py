"""Write docs/inspect.svg, the README's picture of ``voicerelay inspect`` (Textual's own SVG export).

    python docs/make_screenshots.py
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from voicerelay.tui.demo import EVENTS, URL
from voicerelay.tui.inspect_app import InspectApp

HERE = Path(__file__).resolve().parent


async def main() -> None:
    app = InspectApp(URL, connect=False)
    async with app.run_test(size=(130, 34)) as pilot:
        for name, data in EVENTS:
            await app.feed(name, data)
        await pilot.pause(0.2)
        app.save_screenshot(filename="inspect.svg", path=str(HERE))
    print(f"wrote {HERE / 'inspect.svg'}")


if __name__ == "__main__":
    asyncio.run(main())
