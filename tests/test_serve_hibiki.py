"""Hibiki served through the existing conversation path: `serve --model synthetic-hibiki` answers a
client of moshi's wire protocol with translated audio and text; `--model hibiki` is accepted as a
servable kind (offline here, so it stops at the download)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from moshikit.errors import ModelError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
F = 1920


async def _session(url: str, pcm: np.ndarray, frames_back: int) -> tuple[bytes, int, list[str]]:
    import aiohttp
    import sphn

    writer, reader = sphn.OpusStreamWriter(24000), sphn.OpusStreamReader(24000)
    got, texts = 0, []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            hello = await asyncio.wait_for(ws.receive_bytes(), 10)
            for i in range(0, pcm.size, F):
                await ws.send_bytes(b"\x01" + writer.append_pcm(pcm[i:i + F]))
            while got < frames_back:
                msg = await asyncio.wait_for(ws.receive_bytes(), 30)
                if msg[0] == 1:
                    got += reader.append_bytes(msg[1:]).size // F
                elif msg[0] == 2:
                    texts.append(msg[1:].decode())
    return hello, got, texts


@pytest.mark.slow  # ~50 s where the session's first user of the onnx codec exports its graphs
def test_synthetic_hibiki_is_served(mimi_weights, speech):
    from moshikit import serve

    conv = serve.load_conversation("synthetic-hibiki", backend="torch", device="cpu")
    assert conv.lm.conditioned and conv.lm.info.delays[-1] == 2  # Hibiki, conditioned, its delays
    running = serve.RunningServer(serve.ChatServer(conv, serve.ServeConfig(port=0)))
    try:
        hello, got, texts = asyncio.run(_session(running.url, speech[: 16 * F], 16 - 2))
    finally:
        running.stop()
    assert hello == b"\x00" and got >= 14 and texts


def test_hibiki_is_a_servable_kind(mimi_weights):
    from moshikit import serve

    with pytest.raises(ModelError) as err:
        serve.load_conversation("hibiki", backend="torch", device="cpu")
    assert "kyutai/hibiki-1b-pytorch-bf16" in str(err.value) and "needs a Moshi" not in str(err.value)
