"""``voicerelay proxy``: a recording proxy for any Realtime app.

An app points its base URL at the proxy (``websocket_base_url="ws://127.0.0.1:PORT/v1"`` in the
``openai`` SDK); the proxy forwards every message to the upstream and back unchanged, and shows
each one to observers (a recorder; later a linter, a cost meter, the monitor).

- :mod:`.rules`: the pure decisions (where it may listen, who gets in, the upstream handshake);
- :mod:`.observe`: what an observer is and what it sees;
- :mod:`.server`: :class:`~.server.ProxyServer`, the websockets pumps;
- :mod:`.record`: :class:`~.record.Recordings`, the observer that records every session;
- :mod:`.lint`: :class:`~.lint.LiveLint`, the observer that lints every session as it runs.
"""
