"""serve's web page in a real browser: Debian's chromium, headless, driven by playwright, with a
fake microphone fed from a 48 kHz wav of the bundled speech. The page talks to `moshikit serve`
(in this process, where the model's input can be watched; and as a process, killed mid-call) and
to `python -m moshi.server`, both on the tiny synthetic checkpoint."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from moshikit import wire
from moshikit.backends.base import SamplingConfig

CHROMIUM = "/usr/bin/chromium"
F = wire.FRAME
PHONE = {"width": 390, "height": 844}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (the test extra: pip install -e '.[test]')"
    if not os.path.exists(CHROMIUM):
        return "chromium is not installed (Debian: apt-get install chromium; scripts/test.sh installs it as root)"
    return None


@pytest.fixture(scope="module")
def repo(mimi_weights):
    from moshikit.synthetic import lm as synthetic_lm

    return synthetic_lm.ensure_synthetic_moshi(mimi_path=mimi_weights)


@pytest.fixture(scope="module")
def mic_wav(speech, tmp_path_factory) -> Path:
    import soundfile as sf
    import soxr

    path = tmp_path_factory.mktemp("mic") / "speech48k.wav"
    sf.write(path, soxr.resample(speech, 24000, 48000), 48000, subtype="PCM_16")
    return path


def chromium(mic_wav: Path):
    """Headless chromium whose fake microphone plays ``mic_wav`` (a generator for module fixtures:
    ``yield from chromium(path)``); skips the tests without playwright or chromium."""
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={mic_wav}",
            "--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def browser(mic_wav):
    yield from chromium(mic_wav)


def open_page(browser, url: str, *, mic: bool = True, init_script: str | None = None):
    ctx = browser.new_context(permissions=["microphone"] if mic else [], viewport=PHONE, accept_downloads=True,
                              ignore_https_errors=True)
    if init_script:
        ctx.add_init_script(init_script)
    page = ctx.new_page()
    page.goto(url)
    return page


def wait_state(page, state: str, timeout: float = 30.0) -> None:
    page.wait_for_selector(f"body[data-state={state}]", timeout=timeout * 1000)


def message(page) -> str:
    return " ".join(page.inner_text("#message").split())


class Recorder:
    """What the in-process server's model receives (its decoded Opus) and the text it sends."""

    def __init__(self, conv) -> None:
        self.frames: list[np.ndarray] = []
        self.texts: list[str] = []
        step = conv.step

        def spy(pcm):
            self.frames.append(np.asarray(pcm, np.float32).reshape(-1).copy())
            frame = step(pcm)
            if frame.tokens is not None and int(frame.tokens[0]) >= 0:
                self.texts.append(frame.text[0])
            return frame

        conv.step = spy

    def clear(self) -> None:
        self.frames.clear()
        self.texts.clear()


@pytest.fixture(scope="module")
def local(repo):
    from moshikit import serve

    conv = serve.load_conversation(str(repo), backend="torch", device="cpu",
                                   sampling=SamplingConfig(temp=0.0, temp_text=0.0))
    rec = Recorder(conv)
    server = serve.ChatServer(conv, serve.ServeConfig(port=0, idle_timeout=10))
    with serve.RunningServer(server) as running:
        yield running.url.replace("ws://", "http://").removesuffix("/api/chat"), server, rec


def wait_idle(server, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while any(s is not None for s in server.slots) and time.monotonic() < deadline:
        time.sleep(0.05)


def similarity(heard: np.ndarray, ref: np.ndarray) -> float:
    """The best normalised correlation of ``heard`` with a stretch of ``ref`` (looped), over all lags."""
    n = heard.size
    r = np.concatenate([ref, ref[:n]])
    size = 1 << int(np.ceil(np.log2(r.size + n)))
    corr = np.fft.irfft(np.fft.rfft(r, size) * np.conj(np.fft.rfft(heard, size)), size)[: r.size - n + 1]
    energy = np.cumsum(np.concatenate([[0.0], r.astype(np.float64) ** 2]))
    windows = np.sqrt(np.maximum(energy[n:] - energy[:-n], 1e-12))
    return float(np.max(corr / (windows * np.linalg.norm(heard) + 1e-12)))


def test_live_call_hears_the_microphone_plays_moshi_and_saves_it(browser, local, speech, tmp_path):
    base, server, rec = local
    wait_idle(server)
    rec.clear()
    page = open_page(browser, base + "/?autoconnect=1")
    wait_state(page, "live")
    page.wait_for_function("window.moshi.stats.texts >= 3 && window.moshi.stats.played > 1.5", timeout=60_000)
    stats = page.evaluate("window.moshi.stats")
    assert stats["peakOut"] > 1e-3  # the worklet played Moshi's audio, not silence
    assert stats["echoCancellation"] is True  # the browser's echo canceller is on for the microphone
    # the server heard the microphone: what its model received correlates with the file
    deadline = time.monotonic() + 30
    while len(rec.frames) < 30 and time.monotonic() < deadline:
        time.sleep(0.1)
    heard = np.concatenate(rec.frames)
    assert heard.size >= 30 * F
    window = heard[12 * F : 30 * F]
    assert similarity(window, speech) > 0.5
    assert similarity(window, speech[::-1].copy()) < 0.3  # the same measure on a wrong reference
    # the page shows Moshi's words as the server sent them (a prefix: more may be on the way)
    shown = page.text_content("#transcript")
    assert shown.strip() and "".join(rec.texts).startswith(shown)
    assert re.fullmatch(r"\d+ ms", page.inner_text("#latency"))
    assert re.fullmatch(r"\d+ ms · \d+ underruns?( · server behind: .*)?", page.inner_text("#buffer"))
    # a phone-sized screen: nothing wider than it, the controls on it
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    for sel in ("#connect", "#mute", "#transcript", "#save-audio"):
        box = page.locator(sel).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], sel
    shot = page.screenshot(path=str(tmp_path / "live.png"))
    assert len(shot) > 10_000
    if os.environ.get("MOSHIKIT_WEB_SCREENSHOT"):  # how docs/serve-page.png is made
        page.screenshot(path=os.environ["MOSHIKIT_WEB_SCREENSHOT"])
    # mute: the server's model gets silence from then on
    page.click("#mute")
    assert page.inner_text("#mute") == "Unmute"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (len(rec.frames) > 5 and np.abs(np.concatenate(rec.frames[-4:])).max() < 1e-4):
        time.sleep(0.1)
    assert np.abs(np.concatenate(rec.frames[-4:])).max() < 1e-4
    page.click("#connect")
    wait_state(page, "closed")
    assert page.inner_text("#connect") == "Connect"
    # the conversation, saved: a stereo wav (left: the microphone as sent, right: Moshi) and the transcript
    import soundfile as sf

    with page.expect_download() as dl:
        page.click("#save-audio")
    dl.value.save_as(tmp_path / "conversation.wav")
    pcm, rate = sf.read(tmp_path / "conversation.wav", dtype="float32")
    assert rate == 24000 and pcm.ndim == 2 and pcm.shape[1] == 2 and pcm.shape[0] >= 30 * F
    assert similarity(pcm[12 * F : 30 * F, 0], speech) > 0.5
    assert np.sqrt(np.mean(pcm[2 * F :, 1] ** 2)) > 1e-3 and not pcm[:F, 1].any()
    with page.expect_download() as dl:
        page.click("#save-text")
    dl.value.save_as(tmp_path / "transcript.txt")
    text = (tmp_path / "transcript.txt").read_text()
    assert re.match(r"\[\d\d:\d\d\.\d\d\] \S", text)
    assert "".join(re.sub(r"^\[[^]]*\] ", "", line) for line in text.splitlines()).replace(" ", "") == \
        page.text_content("#transcript").replace(" ", "")
    page.context.close()


def test_busy_no_microphone_no_webcodecs_say_so(browser, local):
    base, server, _ = local
    wait_idle(server)
    before = dict(server.stats)
    # sampling settings in the page's address fill its panel and reach the model, as the official client's do
    first = open_page(browser, base + "/?autoconnect=1&text_temperature=0.5&audio_topk=50")
    wait_state(first, "live")
    assert first.input_value("#text_temperature") == "0.5" and first.input_value("#audio_topk") == "50"
    deadline = time.monotonic() + 20
    while server.conv.lm.sampling == server.base_sampling and time.monotonic() < deadline:
        time.sleep(0.05)
    got = server.conv.lm.sampling
    assert (got.temp_text, got.top_k, got.temp, got.top_k_text) == (0.5, 50, 0.0, server.base_sampling.top_k_text)
    second = open_page(browser, base + "/?autoconnect=1")
    wait_state(second, "error")
    assert "The server is busy (another session is running, try again later)" in message(second)
    denied = open_page(browser, base + "/", mic=False)
    denied.click("#connect")
    wait_state(denied, "error")
    assert message(denied).startswith("Microphone permission denied")
    old = open_page(browser, base + "/", init_script="delete window.AudioEncoder; delete window.AudioDecoder;")
    old.click("#connect")
    wait_state(old, "error")
    assert "lacks WebCodecs" in message(old)
    first.click("#connect")
    wait_state(first, "closed")
    assert server.stats["sessions"] - before.get("sessions", 0) == 1  # denied and old never connected
    assert server.stats["refused"] - before.get("refused", 0) == 1
    for p in (first, second, denied, old):
        p.context.close()


TRY_SESSION = """(url) => new Promise((done) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    let opened = false;
    ws.onopen = () => { opened = true; };
    ws.onmessage = (e) => { done({ opened, first: Array.from(new Uint8Array(e.data)) }); ws.close(); };
    ws.onclose = (e) => done({ opened, code: e.code });
    setTimeout(() => done({ opened, timeout: true }), 10000);
})"""


def test_a_page_from_another_origin_cannot_open_a_session(browser, local, tmp_path):
    """A web page the user visits (here one served by a second local server, on another port)
    tries to drive the server on loopback: its WebSocket is refused before a session starts; the
    same script on the server's own page gets a session."""
    import functools
    import http.server

    base, server, _ = local
    wait_idle(server)
    (tmp_path / "other.html").write_text("<!doctype html><title>another site</title><p>hello</p>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    chat = base.replace("http://", "ws://") + "/api/chat"
    before = dict(server.stats)
    try:
        page = open_page(browser, f"http://127.0.0.1:{other.server_address[1]}/other.html", mic=False)
        got = page.evaluate(TRY_SESSION, chat)
        assert got == {"opened": False, "code": 1006}, got  # the handshake failed (403): no session
        page.context.close()
    finally:
        other.shutdown()
        other.server_close()
    assert server.stats["sessions"] == before.get("sessions", 0)
    assert server.stats["refused_origin"] - before.get("refused_origin", 0) == 1
    own = open_page(browser, base + "/", mic=False)
    assert own.evaluate(TRY_SESSION, chat) == {"opened": True, "first": [0]}  # the handshake byte
    own.context.close()
    wait_idle(server)
    assert server.stats["sessions"] - before.get("sessions", 0) == 1


class ServeProcess:
    """`moshikit serve` as a user runs it; its stderr collected on a thread."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "moshikit", "serve", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.err: list[str] = []
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()
        self.url = self.proc.stdout.readline().strip()
        deadline = time.monotonic() + 10
        while not any(line.startswith("open ") for line in self.err) and time.monotonic() < deadline:
            time.sleep(0.05)

    @property
    def page(self) -> str:
        return next(line.split()[1] for line in self.err if line.startswith("open "))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_two_tabs_on_batch_two_a_third_refused_then_the_server_dies(browser, repo):
    """As a phone user runs it: --host 0.0.0.0 --ssl prints an https address with a token."""
    server = ServeProcess("--model", "synthetic", "--host", "0.0.0.0", "--ssl", "--port", "0", "--batch", "2",
                          "--backend", "torch", "--device", "cpu")
    try:
        assert server.url.startswith("wss://0.0.0.0:") and "?token=" in server.url, "".join(server.err)
        page_url = server.page
        assert page_url.startswith("https://") and "/?token=" in page_url
        refused = open_page(browser, page_url.split("?")[0])
        assert refused.evaluate("document.body.innerText").startswith("401 unauthorized")
        tabs = [open_page(browser, page_url + "&autoconnect=1") for _ in range(2)]
        for tab in tabs:
            wait_state(tab, "live")
        third = open_page(browser, page_url + "&autoconnect=1")
        wait_state(third, "error")
        assert "The server is busy (all 2 sessions are in use" in message(third)
        for tab in tabs:
            tab.wait_for_function("window.moshi.stats.texts >= 2 && window.moshi.stats.played > 0.5", timeout=60_000)
        server.stop()  # killed mid-call: no close frame
        for tab in tabs:
            wait_state(tab, "error", 15)
            assert message(tab).startswith("Connection to the server lost")
        tabs[0].click("#connect")
        wait_state(tabs[0], "error", 15)
        assert message(tabs[0]).startswith("Cannot reach the Moshi server")
        for p in (refused, *tabs, third):
            p.context.close()
    finally:
        server.stop()
    err = "".join(server.err)
    assert "refused" in err and "no token" in err and "Traceback" not in err


def test_page_talks_to_official_moshi_server(browser, repo, tmp_path):
    from moshikit import webpage
    from moshikit.testing.moshi_server import OfficialServer

    log = tmp_path / "server.log"
    try:
        official = OfficialServer(repo, log=log, static=webpage.PAGE_DIR)
    except RuntimeError as exc:
        pytest.fail(f"{exc}\n{log.read_text()[-3000:]}")
    try:
        page = open_page(browser, f"http://127.0.0.1:{official.port}/?autoconnect=1")
        wait_state(page, "live", 60)
        page.wait_for_function("window.moshi.stats.texts >= 2 && window.moshi.stats.played > 1.0", timeout=60_000)
        assert page.text_content("#transcript").strip()
        assert page.evaluate("window.moshi.stats.peakOut") > 1e-3
        page.click("#connect")
        wait_state(page, "closed")
        page.context.close()
    finally:
        official.stop()


def ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def test_the_pages_ogg_framing(browser, local):
    """ogg.js: the reader takes a server's stream (sphn's) cut anywhere; the writer's pages carry
    valid checksums, Opus headers and granule positions (a real stream's decoding by the server is
    the live call's test)."""
    import sphn

    base, _, _ = local
    page = open_page(browser, base + "/", mic=False)
    writer = sphn.OpusStreamWriter(24000)
    t = np.arange(10 * F)
    data = writer.append_pcm((0.3 * np.sin(t * 0.05)).astype(np.float32))
    expected = wire.OggGuard().packets(data)
    assert expected >= 3
    for cut in (1, 7, 4096):
        got = page.evaluate("""async ([bytes, cut]) => {
            const { OggReader } = await import('./ogg.js');
            const r = new OggReader(), data = new Uint8Array(bytes);
            const sizes = [];
            for (let i = 0; i < data.length; i += cut) for (const p of r.push(data.subarray(i, i + cut))) sizes.push(p.length);
            return sizes; }""", [list(data), cut])
        assert len(got) == expected and got[0] == 19  # the first packet is OpusHead
    out = bytes(page.evaluate("""async () => {
        const { OggWriter } = await import('./ogg.js');
        const w = new OggWriter(7), a = w.headers(24000), b = w.audio(new Uint8Array(300).fill(9), 960);
        return [...a, ...b]; }"""))
    pages, pos = [], 0
    while pos < len(out):
        assert out[pos:pos + 4] == b"OggS"
        nseg = out[pos + 26]
        lacing = list(out[pos + 27 : pos + 27 + nseg])
        size = 27 + nseg + sum(lacing)
        raw = bytearray(out[pos : pos + size])
        crc = int.from_bytes(raw[22:26], "little")
        raw[22:26] = bytes(4)
        assert crc == ogg_crc(bytes(raw))
        pages.append((raw[5], int.from_bytes(raw[6:14], "little"), int.from_bytes(raw[18:22], "little"), lacing,
                      bytes(raw[27 + nseg :])))
        pos += size
    (f0, g0, s0, _, head), (_, _, s1, _, tags), (_, g2, s2, lacing2, _) = pages
    assert f0 == 2 and head[:8] == b"OpusHead" and head[9] == 1 and int.from_bytes(head[12:16], "little") == 24000
    assert tags[:8] == b"OpusTags" and (s0, s1, s2) == (0, 1, 2) and g0 == 0
    assert g2 == 960 and lacing2 == [255, 45]
    page.context.close()
