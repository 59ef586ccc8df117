"""The one error tree: what can go wrong, said for the person who has to act on it.

Every error voicerelay raises on purpose is a :class:`VoiceRelayError`. Its ``str()`` is one line
(newlines and runs of spaces are folded when it is made), ``exit_code`` is what the command line
exits with, and ``code`` is the machine-readable name a gateway puts in an ``error`` event::

    VoiceRelayError                      exit 1   the run failed
     ├── UsageError                      exit 2   unusable options or input
     │    ├── InputError                          a file or folder that cannot be used as input
     │    │    ├── AudioFileError                 not audio, empty, truncated, unwritable
     │    │    └── RecordingError                 a recorded session that cannot be read or written
     │    ├── DeviceError                         no usable microphone or speakers
     │    ├── GatewayConfigError                  a gateway that cannot be built as asked
     │    └── ListenError                         a port that cannot be listened on
     ├── UpstreamError                   exit 1   the Realtime server could not be used
     │    ├── UpstreamUnavailable                 refused, DNS, timeout (after retries)
     │    ├── UpstreamRejected                    the handshake was refused (HTTP 4xx/5xx)
     │    ├── UpstreamClosed                      the server ended the session
     │    ├── ConnectionLost                      an open connection dropped (the relay reconnects)
     │    └── UpstreamTimeout                     it accepted the connection, then did not answer in time
     └── GatewayError                    exit 1   a gateway, as a server or as seen by a client
          ├── ContractError                       a browser event the gateway refuses (``code``)
          ├── ClusterUnavailable                  Redis cannot be used right now
          └── GatewayClientError                  what :class:`~voicerelay.client.GatewayClient` raises
               ├── GatewayUnreachableError, AuthenticationError, NotConnectedError,
               ├── NoSessionError, SessionStartError, QueueFullError,
               └── GatewayTimeoutError (also a TimeoutError), ClientUsageError (also a ValueError)

Foreign exceptions (``OSError``, websockets', soundfile's, sounddevice's, socketio's, aiohttp's,
redis's) are translated into these where they enter voicerelay, once; the command line turns a
``VoiceRelayError`` into its one line and exit code in one place (``cli.main``). A Ctrl-C exits
with :data:`EXIT_INTERRUPTED`.

The pure layer (``voicerelay.protocol``) imports nothing from here: its two errors
(``ConfigError``, ``AudioFormatError``) are plain ``ValueError``\\ s that the edges translate.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

#: The command line's exit codes (the README's table lists them per command).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_SPACE = re.compile(r"\s+")


def one_line(text: object) -> str:
    """``text`` as one line: newlines and runs of white space become one space."""
    return _SPACE.sub(" ", str(text)).strip()


class VoiceRelayError(Exception):
    """The root. ``str()`` is one line; ``exit_code`` and ``code`` say what it maps to."""

    exit_code: ClassVar[int] = EXIT_FAILED
    code: str = "error"
    #: What the command line puts before the message (``voicerelay: error: upstream failed: ...``).
    label: ClassVar[str] = ""

    def __init__(self, message: object = "", *, code: str | None = None) -> None:
        super().__init__(one_line(message))
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


# ------------------------------------------------------------------------------ usage and input


class UsageError(VoiceRelayError):
    """Unusable options or input: exit 2."""

    exit_code = EXIT_USAGE
    code = "invalid_usage"


class InputError(UsageError):
    """A file or folder that cannot be used as the input."""

    code = "invalid_input"


class AudioFileError(InputError):
    """An audio file that cannot be read (or written): missing, not audio, empty, truncated."""

    code = "invalid_audio_file"


class RecordingError(InputError):
    """A recorded session that cannot be read, or a recording that cannot be written."""

    code = "invalid_recording"


class DeviceError(UsageError):
    """No usable microphone or speakers (PortAudio missing, no device, an ambiguous name, no rate)."""

    code = "device_unusable"


class GatewayConfigError(UsageError, ValueError):
    """A gateway that cannot be built as asked (both modes at once, an unloadable agent, a bad URL)."""

    code = "invalid_config"


class ListenError(UsageError):
    """A server that cannot listen where it was told to (a port in use, an address not here)."""

    code = "cannot_listen"


# ------------------------------------------------------------------------------ the upstream


class UpstreamError(VoiceRelayError):
    """The Realtime server could not be used."""

    code = "upstream_error"
    label = "upstream failed"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamRejected(UpstreamError):
    code = "upstream_rejected"

    def __init__(self, message: object, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UpstreamClosed(UpstreamError):
    code = "upstream_closed"

    def __init__(self, message: object, server_code: str | None = None) -> None:
        super().__init__(message)
        self.server_code = server_code  # the server's error code, when it said one


class ConnectionLost(UpstreamError):
    """The open connection to the server dropped (the relay reconnects; it is raised to a user only
    once the reconnects are used up, as :class:`UpstreamClosed`)."""

    code = "upstream_lost"

    def __init__(self, message: object = "connection dropped", close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


class UpstreamTimeout(UpstreamError):
    """The server accepted the connection but did not configure the session (or answer) in time."""

    code = "upstream_timeout"


# ------------------------------------------------------------------------------ the gateway


class GatewayError(VoiceRelayError):
    """A gateway, as a server or as seen by a client."""

    code = "gateway_error"


class ContractError(GatewayError):
    """A browser event the gateway refuses; ``code`` goes into the ``error`` event."""

    def __init__(self, code: str, message: object) -> None:
        super().__init__(message, code=code)

    def payload(self) -> dict[str, Any]:
        return {"message": str(self), "code": self.code}


class ClusterUnavailable(GatewayError):
    """Redis (and so the other nodes) cannot be reached right now."""

    code = "cluster_degraded"


class GatewayClientError(GatewayError):
    """Base of the errors :class:`~voicerelay.client.GatewayClient` raises."""

    code = "client_error"


class GatewayUnreachableError(GatewayClientError):
    """The gateway cannot be reached (Socket.IO or HTTP), after the retries."""


class AuthenticationError(GatewayClientError):
    """The gateway refused the connection's token; retrying would not help."""


class NotConnectedError(GatewayClientError):
    """The action needs a live connection (``send_audio``), or none came in time."""


class NoSessionError(GatewayClientError):
    """The action needs an active session: call ``start_session()`` first."""


class SessionStartError(GatewayClientError):
    """``start_session`` failed: the gateway answered with an error, or too late."""


class QueueFullError(GatewayClientError):
    """A control action while disconnected, with ``max_queued_actions`` already queued."""


class GatewayTimeoutError(GatewayClientError, TimeoutError):
    """The gateway did not acknowledge an action in time."""


class ClientUsageError(GatewayClientError, ValueError):
    """A wrong argument or call."""


__all__ = [
    "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE",
    "AudioFileError", "AuthenticationError", "ClientUsageError", "ConnectionLost", "ClusterUnavailable", "ContractError", "DeviceError",
    "GatewayClientError", "GatewayConfigError", "GatewayError", "GatewayTimeoutError", "GatewayUnreachableError",
    "InputError", "ListenError", "NoSessionError", "NotConnectedError", "QueueFullError", "RecordingError",
    "SessionStartError", "UpstreamClosed", "UpstreamError", "UpstreamRejected", "UpstreamTimeout",
    "UpstreamUnavailable", "UsageError", "VoiceRelayError", "one_line",
]
