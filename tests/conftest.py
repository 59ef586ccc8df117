"""Shared fixtures: the embedded backend on a loopback port, recordings, and the SDK's
strict event validators (the official ``openai`` types are the reference for every event)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any, get_args

import numpy as np
import pydantic
import pytest
import soundfile

from voicerelay.backend.engines import Engines
from voicerelay.backend.server import BackendServer

from . import audio_rig

ROOT = Path(__file__).resolve().parent.parent
RECORDINGS = ROOT / "recordings"


def strict_adapter(alias: Any) -> pydantic.TypeAdapter:
    """A validating adapter for one of the SDK's event unions (see protocol/realtime.md §14)."""
    union = get_args(alias)[0]
    return pydantic.TypeAdapter(Annotated[union, pydantic.Field(discriminator="type")])


class SDK:
    from openai.types.beta.realtime import RealtimeClientEvent as _BetaClient
    from openai.types.beta.realtime import RealtimeServerEvent as _BetaServer
    from openai.types.realtime import RealtimeClientEvent as _GAClient
    from openai.types.realtime import RealtimeServerEvent as _GAServer

    GA_SERVER = strict_adapter(_GAServer)
    GA_CLIENT = strict_adapter(_GAClient)
    BETA_SERVER = strict_adapter(_BetaServer)
    BETA_CLIENT = strict_adapter(_BetaClient)


@pytest.fixture(scope="session")
def sdk() -> type[SDK]:
    return SDK


@pytest.fixture(scope="session")
def engines() -> Iterator[Engines]:
    """One set of speech engines for the whole run (loading them takes a moment)."""
    shared = Engines()
    shared.warm_up()
    yield shared
    shared.close()


@pytest.fixture(scope="session")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[audio_rig.AudioRig]:
    """The session's one virtual sound card (PulseAudio in user mode: tests/audio_rig.py). Defined
    here, once: a session fixture imported into several test modules is a separate fixture in each,
    and would start a sound server per module."""
    with audio_rig.AudioRig(tmp_path_factory.mktemp("pa")) as started:
        yield started


@pytest.fixture
async def backend(engines: Engines) -> AsyncIterator[BackendServer]:
    async with BackendServer(port=0, engines=engines, pace=20.0) as server:
        yield server


def read_recording(stem: str) -> np.ndarray:
    """A shipped recording as int16 mono 24 kHz samples."""
    pcm, rate = soundfile.read(RECORDINGS / f"{stem}.wav", dtype="int16")
    assert rate == 24_000 and pcm.ndim == 1
    return pcm


def room_noise(ms: int) -> np.ndarray:
    """``ms`` of the recordings' own background noise (their first 250 ms, tiled): silence as a
    microphone hears it, which server VAD must not take for speech."""
    lead = read_recording("hello_there")[: 250 * 24]
    return np.tile(lead, -(-ms // 250))[: ms * 24]
