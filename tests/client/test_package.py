"""``voicerelay.client``'s public names: the ones programs import, from the one error tree."""

from __future__ import annotations

import json
import subprocess
import sys

import voicerelay.client
from voicerelay import errors


def test_the_public_names_import_and_the_errors_are_the_error_trees() -> None:
    from voicerelay.client import (  # the names programs have always imported from here
        AuthenticationError,
        GatewayClient,
        GatewayClientError,
        GatewayTimeoutError,
        GatewayUnreachableError,
        NoSessionError,
        NotConnectedError,
        QueueFullError,
        SessionStartError,
        SessionState,
        UsageError,
    )
    from voicerelay.client.connection import GatewayClient as Connection
    from voicerelay.client.mirror import SessionState as Mirrored

    assert GatewayClient is Connection and SessionState is Mirrored
    assert UsageError is errors.ClientUsageError and issubclass(UsageError, ValueError)
    for error in (AuthenticationError, GatewayTimeoutError, GatewayUnreachableError, NoSessionError,
                  NotConnectedError, QueueFullError, SessionStartError, UsageError):
        assert getattr(errors, error.__name__) is error  # UsageError is ClientUsageError there
        assert issubclass(error, GatewayClientError) and issubclass(error, errors.VoiceRelayError)
    assert GatewayClientError is errors.GatewayClientError


def test_all_lists_exactly_what_is_exported() -> None:
    for name in voicerelay.client.__all__:
        assert getattr(voicerelay.client, name) is not None, name
    public = {n for n in dir(voicerelay.client) if not n.startswith("_")} - {"TYPE_CHECKING", "Any", "annotations"}
    assert public <= set(voicerelay.client.__all__) | {"connection", "mirror"}


def test_the_mirror_and_the_errors_load_without_socketio() -> None:
    code = ("import sys, json\n"
            "from voicerelay.client import SessionState, GatewayClientError, UsageError\n"
            "from voicerelay.client.mirror import StateMirror\n"
            "print(json.dumps([m for m in ('socketio', 'aiohttp', 'engineio') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
