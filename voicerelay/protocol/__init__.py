"""The sans-I/O Realtime protocol layer: event names and dialects, configuration, audio.

Nothing here performs I/O, uses asyncio or imports the rest of voicerelay.
"""
