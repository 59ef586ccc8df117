"""What PortAudio and ALSA print on file descriptor 2 while a device is opened (no device needed)."""

from __future__ import annotations

import os

import pytest

from voicerelay.audio.devices import _native_stderr


def test_native_chatter_is_caught_and_anything_else_passes_through(capfd: pytest.CaptureFixture[str]) -> None:
    with _native_stderr() as reasons:
        # what libasound's default error handler and PortAudio's PA_ENSURE write, straight to fd 2
        os.write(2, b"ALSA lib pcm_pulse.c:758:(pulse_prepare) PulseAudio: Unable to create stream: No such entity\n\n")
        os.write(2, b"Expression 'r' failed in 'src/hostapi/alsa/pa_linux_alsa.c', line: 2097\n")
        os.write(2, b"something else entirely\n")
        os.write(2, b"\x1b[2;5Ha screen drawn\r\n\x1b[?25h")  # an app drawing on fd 2: passed on byte for byte
        assert capfd.readouterr().err == ""  # nothing reaches the terminal while a device opens
    assert reasons == ["PulseAudio: Unable to create stream: No such entity"]
    assert capfd.readouterr().err == "something else entirely\n\x1b[2;5Ha screen drawn\r\n\x1b[?25h"
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"  # fd 2 is back
