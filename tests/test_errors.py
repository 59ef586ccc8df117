"""The error tree: one line, an exit code and an error code per class."""

from __future__ import annotations

import pytest

from voicerelay import errors


def test_a_message_is_always_one_line() -> None:
    exc = errors.AudioFileError("cannot read x.wav:\n  not an   audio file\n")
    assert str(exc) == "cannot read x.wav: not an audio file" and exc.message == str(exc)


@pytest.mark.parametrize(("cls", "exit_code", "code"), [
    (errors.UsageError, 2, "invalid_usage"), (errors.AudioFileError, 2, "invalid_audio_file"),
    (errors.RecordingError, 2, "invalid_recording"), (errors.DeviceError, 2, "device_unusable"),
    (errors.ListenError, 2, "cannot_listen"), (errors.UpstreamUnavailable, 1, "upstream_unavailable"),
    (errors.UpstreamTimeout, 1, "upstream_timeout"), (errors.ConnectionLost, 1, "upstream_lost"),
    (errors.ClusterUnavailable, 1, "cluster_degraded"),
])
def test_each_class_says_its_exit_code_and_code(cls: type[errors.VoiceRelayError], exit_code: int, code: str) -> None:
    exc = cls("something")
    assert isinstance(exc, errors.VoiceRelayError) and exc.exit_code == exit_code and exc.code == code


def test_a_browser_error_carries_its_own_code_and_payload() -> None:
    exc = errors.ContractError("chunk_too_large", "audio_data is 70000 characters,\nthe limit is 65536")
    assert exc.code == "chunk_too_large" and exc.exit_code == 1
    assert exc.payload() == {"message": "audio_data is 70000 characters, the limit is 65536", "code": "chunk_too_large"}


def test_foreign_bases_are_kept_where_callers_catch_them() -> None:
    assert issubclass(errors.GatewayConfigError, ValueError) and issubclass(errors.GatewayTimeoutError, TimeoutError)
    assert issubclass(errors.ClientUsageError, ValueError)
    closed = errors.UpstreamClosed("the server ended the session: missing_model", "missing_model")
    assert closed.server_code == "missing_model" and closed.label == "upstream failed"


def test_old_names_still_import() -> None:
    from voicerelay.audio.devices import DeviceError
    from voicerelay.client import UsageError
    from voicerelay.gateway.contract import ContractError
    from voicerelay.replay import ReplayInputError
    from voicerelay.talk import TalkError
    from voicerelay.upstream import UpstreamError

    assert (DeviceError, ContractError, UpstreamError) == (errors.DeviceError, errors.ContractError,
                                                           errors.UpstreamError)
    assert ReplayInputError is TalkError is errors.UsageError and UsageError is errors.ClientUsageError
