"""A tiny synthetic Kyutai TTS model, loaded once for the TTS tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tts_model(mimi_weights):
    import torch

    from moshikit.tts import load_tts

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only slow it down on a shared 2-core machine
    yield load_tts("synthetic")
    torch.set_num_threads(before)
