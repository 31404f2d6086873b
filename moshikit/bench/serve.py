"""``bench serve``: a ``moshikit serve`` process driven by N concurrent clients over loopback, next
to the same model run directly in this process (one ``transcribe`` stream; the TTS model's own
generation), in the same run.

* Speech-to-text: N WebSocket clients speak moshi-server's protocol (``/api/asr-streaming``), each
  sending its audio at real-time pace (1920 samples every 80 ms, as a microphone does), then a
  ``Marker`` and the silence that flushes the model's delay. Per stream: time to the first word
  (from the first audio sent) and the marker lag (from the moment the audio the marker waits for,
  its own and the model's delay after it, has been sent, to the marker's echo:
  near zero when the server keeps up, the backlog when it does not). A count N is *held in real
  time* when every stream's lag stays under ``LAG_HELD`` seconds. Unpaced (``x real time``): the
  same N streams sent as fast as the server reads them, audio seconds over wall seconds per stream.
* Text-to-speech: N concurrent ``POST /v1/audio/speech`` (raw PCM, streamed): time to the first
  audio byte, and x real time per request. A request the full server refuses (429) comes back after
  its ``Retry-After``, as a client does; the wait counts in its times.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .core import Row, Stats, latency_row, load_average, throughput_row

FRAME = 1920
RATE = 24000
#: A stream keeps up when its marker comes back within this many seconds of the last audio sent.
LAG_HELD = 1.0
TEXT = ("The quick brown fox jumps over the lazy dog. It is a small model that only exists for tests, "
        "and it speaks noise. Please tell me a story about the sea and the wind.")


@dataclass
class ServePlan:
    stt: str | None = None  # an STT model for the server (synthetic, stt-1b, a folder...)
    tts: str | None = None  # a TTS model for the server
    streams: list[int] = field(default_factory=lambda: [1, 4])  # concurrent clients per measurement
    seconds: float = 10.0  # audio per STT stream
    words: int = 20  # words per TTS request
    stt_batch: int | None = None
    tts_batch: int | None = None
    backend: str | None = None  # the server's LM backend (--backend)
    tts_backend: str | None = None  # the server's --tts-backend
    device: str | None = None
    reference: bool = True
    notes: list[str] = field(default_factory=list)


class Server:
    """``moshikit serve`` in a child process on a free loopback port; ``base`` once it listens."""

    def __init__(self, plan: ServePlan, timeout: float = 900.0) -> None:
        cmd = [sys.executable, "-m", "moshikit", "serve", "--port", "0"]
        for flag, value in (("--stt", plan.stt), ("--tts", plan.tts), ("--stt-batch", plan.stt_batch),
                            ("--tts-batch", plan.tts_batch), ("--backend", plan.backend), ("--device", plan.device),
                            ("--tts-backend", plan.tts_backend)):
            if value is not None:
                cmd += [flag, str(value)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()  # the address, once the models are loaded
        if not line.startswith("http"):
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.close()
            from ..errors import MoshikitError

            raise MoshikitError(f"the server did not start: {(err.strip().splitlines() or ['no output'])[-1]}")
        self.base = line.rstrip("/")

    def peak_rss_mb(self) -> float | None:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for row in f:
                    if row.startswith("VmHWM:"):
                        return round(int(row.split()[1]) / 1024, 1)
        except OSError:
            return None
        return None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ---------------------------------------------------------------- speech-to-text clients


@dataclass
class SttResult:
    first_word: float | None  # seconds from the first audio sent to the first Word
    lag: float | None  # seconds the marker's echo came after its audio and the model's delay were sent
    wall: float  # seconds from the first audio sent to the marker's echo
    words: int


async def stt_client(url: str, pcm: np.ndarray, *, paced: bool, flush_seconds: float,
                     delay: float = 0.0) -> SttResult:
    """One stream of moshi-server's protocol: ``pcm`` (24 kHz), a marker, silence to flush.
    ``delay``: the model's delay in seconds (the marker cannot come back before that much audio
    after it has been sent)."""
    import msgpack
    from websockets.asyncio.client import connect

    silence = np.zeros(int(flush_seconds * RATE), np.float32)
    chunks = [c for c in np.split(pcm, range(FRAME, pcm.size, FRAME))]
    flush = [c for c in np.split(silence, range(FRAME, silence.size, FRAME))]
    got: dict = {"first": None, "marker": None, "words": 0}
    async with connect(url, max_size=None, open_timeout=60) as ws:
        t0 = time.perf_counter()

        async def receive() -> None:
            async for raw in ws:
                msg = msgpack.unpackb(raw)
                kind = msg.get("type")
                if kind == "Word":
                    got["words"] += 1
                    if got["first"] is None:
                        got["first"] = time.perf_counter() - t0
                elif kind == "Marker":
                    got["marker"] = time.perf_counter()
                    return
                elif kind == "Error":
                    from ..errors import MoshikitError

                    raise MoshikitError(f"the server refused a stream: {msg.get('message')}")

        reader = asyncio.ensure_future(receive())
        sent = 0

        async def send(chunk: np.ndarray) -> None:
            nonlocal sent
            if paced:
                await asyncio.sleep(max(0.0, t0 + sent / RATE - time.perf_counter()))
            await ws.send(msgpack.packb({"type": "Audio", "pcm": chunk.tolist()}))
            sent += chunk.size

        for c in chunks:
            await send(c)
        await ws.send(msgpack.packb({"type": "Marker", "id": 1}))
        marked, due = sent, None
        for c in flush:
            await send(c)
            if due is None and sent >= marked + delay * RATE:
                due = time.perf_counter()  # the audio the marker waits for is all sent
        due = due or time.perf_counter()
        await asyncio.wait_for(reader, timeout=max(60.0, 10 * (pcm.size + silence.size) / RATE))
    return SttResult(got["first"], got["marker"] - due, got["marker"] - t0, got["words"])


async def stt_clients(url: str, clips: list[np.ndarray], *, paced: bool, flush_seconds: float,
                      delay: float = 0.0) -> list[SttResult]:
    return list(await asyncio.gather(*(stt_client(url, c, paced=paced, flush_seconds=flush_seconds, delay=delay)
                                       for c in clips)))


# ---------------------------------------------------------------- text-to-speech clients


def tts_request(base: str, text: str, model: str) -> tuple[float | None, float, int]:
    """One streamed ``/v1/audio/speech`` request (raw PCM): (first byte s, wall s, samples)."""
    import http.client
    import json
    from urllib.parse import urlsplit

    from ..errors import MoshikitError

    u = urlsplit(base)
    body = json.dumps({"model": model, "input": text, "voice": "default", "response_format": "pcm"})
    t0 = time.perf_counter()
    while True:  # a full server says when to come back (429, Retry-After): the wait counts, as a client's
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
        conn.request("POST", "/v1/audio/speech", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 429 or time.perf_counter() - t0 > 600:
            break
        resp.read()
        conn.close()
        time.sleep(float(resp.getheader("Retry-After") or 1))
    if resp.status != 200:
        raise MoshikitError(f"the server answered a speech request with HTTP {resp.status}: "
                            f"{resp.read()[:200].decode(errors='replace')}")
    first, size = None, 0
    while chunk := resp.read1(65536):
        if first is None:
            first = time.perf_counter() - t0
        size += len(chunk)
    wall = time.perf_counter() - t0
    conn.close()
    return first, wall, size // 2


async def tts_clients(base: str, n: int, text: str, model: str) -> list[tuple[float | None, float, int]]:
    loop = asyncio.get_running_loop()
    return list(await asyncio.gather(*(loop.run_in_executor(None, tts_request, base, text, model)
                                       for _ in range(n))))


# ---------------------------------------------------------------- the stage



def _row(stage: str, name: str, task: str, unit: str, samples: list[float], **params) -> Row:
    return Row(stage, name, task, unit, Stats.of(samples), params, samples=samples)


def bench_serve(plan: ServePlan) -> Iterator[Row]:
    from ..synthetic.core import speech_sample

    speech = speech_sample()
    if plan.stt:
        yield from _stt_rows(plan, speech)
    if plan.tts:
        yield from _tts_rows(plan)


def _stt_rows(plan: ServePlan, speech: np.ndarray) -> Iterator[Row]:
    from .. import stt

    n_max = max(plan.streams)
    clips = [np.resize(np.roll(speech, 24000 * i), int(plan.seconds * RATE)).astype(np.float32) for i in range(n_max)]
    if plan.reference:  # the same model, one stream, in this process: what `transcribe` gets
        model = stt.load_stt(plan.stt, backend=plan.backend, device=plan.device)

        def one() -> None:
            for s in stt.run_streams(model, [stt.Stream(model, "s0", [clips[0]], refine=True)], 1,
                                     chunk=stt.TranscribeOptions().chunk):
                s.finish()

        one()  # warm-up
        t = time.perf_counter()
        one()
        yield throughput_row("serve", f"moshikit transcribe, in process ({model.lm.info.backend})",
                             f"1 stream x {plan.seconds:g} s", plan.seconds, [time.perf_counter() - t],
                             streams=1)
        delay = model.delay_frames / 12.5
        del model
    else:
        delay = 2.5 if "2.6b" in plan.stt or plan.stt == "stt-en" else 0.5  # Kyutai's two models
        plan.notes.append(f"stt: the model's delay taken as {delay:g} s (--no-reference loads no model to read it)")
    flush = delay + 1.0
    server = Server(plan)
    try:
        url = server.base.replace("http://", "ws://") + "/api/asr-streaming"
        asyncio.run(stt_clients(url, [clips[0][: 2 * RATE]], paced=False, flush_seconds=flush))  # warm-up
        held = []
        for n in plan.streams:
            results = asyncio.run(stt_clients(url, clips[:n], paced=False, flush_seconds=flush))
            yield throughput_row("serve", "moshikit serve stt, unpaced", f"{n} streams x {plan.seconds:g} s",
                                 plan.seconds + flush, [r.wall for r in results], streams=n,
                                 peak_rss_mb=server.peak_rss_mb())
            results = asyncio.run(stt_clients(url, clips[:n], paced=True, flush_seconds=flush, delay=delay))
            lags = [r.lag for r in results]
            firsts = [r.first_word for r in results if r.first_word is not None]
            ok = max(lags) <= LAG_HELD
            if ok:
                held.append(n)
            row = latency_row("serve", "moshikit serve stt, real-time pace", f"{n} streams: marker lag",
                              lags, streams=n, held=ok)
            if firsts:
                row.params["first_word_ms_p50"] = round(1000 * float(np.median(firsts)), 1)
            yield row
        plan.notes.append(f"stt: the largest count of paced streams held in real time (every lag <= {LAG_HELD:g} s): "
                          f"{max(held) if held else 'none'} of {plan.streams}")
    finally:
        server.close()


def _tts_rows(plan: ServePlan) -> Iterator[Row]:
    text = " ".join(TEXT.split()[: plan.words])
    if plan.reference:
        yield from _tts_reference(plan, text)
    server = Server(ServePlan(tts=plan.tts, tts_batch=plan.tts_batch, device=plan.device,
                              tts_backend=plan.tts_backend))
    try:
        asyncio.run(tts_clients(server.base, 1, "Warm up.", plan.tts))
        for n in plan.streams:
            results = asyncio.run(tts_clients(server.base, n, text, plan.tts))
            walls = [w for _, w, _ in results]
            audio = [s / RATE for _, _, s in results]
            samples = [a / w for a, w in zip(audio, walls)]
            yield _row("serve", "moshikit serve tts (/v1/audio/speech)", f"{n} requests x {plan.words} words",
                       "x real time", samples, streams=n, load=load_average(), peak_rss_mb=server.peak_rss_mb())
            firsts = [f for f, _, _ in results if f is not None]
            if firsts:
                yield latency_row("serve", "moshikit serve tts (/v1/audio/speech)", f"{n} requests: first audio",
                                  firsts, streams=n)
    finally:
        server.close()


def _tts_reference(plan: ServePlan, text: str) -> Iterator[Row]:
    """The model's own generation in this process, one request: pocket-tts's API for Pocket TTS,
    moshikit's ``speak`` path otherwise."""
    from ..tts import Settings, chunks, load_tts, tts_choice

    if tts_choice(plan.tts, plan.tts_backend, plan.device).backend == "pocket":
        from .tts_pocket import pocket_subjects

        name, _, run, _ = pocket_subjects(plan.tts, text)[1]
    else:
        model = load_tts(plan.tts, backend=plan.tts_backend, device=plan.device)
        voice = model.resolve_voice(None)

        def run():
            speech = model.generate(chunks([text]), [voice], Settings())
            return speech.first_audio, speech.samples

        name = "moshikit speak, in process"
    run()  # warm-up
    t = time.perf_counter()
    first, samples = run()
    wall = time.perf_counter() - t
    yield throughput_row("serve", name, f"1 request x {plan.words} words", samples / RATE, [wall], streams=1)
    if first is not None:
        yield latency_row("serve", name, "1 request: first audio", [first], streams=1)
