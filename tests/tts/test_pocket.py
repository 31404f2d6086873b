"""The Pocket TTS backend on a synthetic checkpoint in pocket-tts's published layout: its output
equals pocket-tts's own API sample for sample, seeds repeat, voices (predefined, saved states,
cloning) resolve, and what it cannot do is one line each."""

from __future__ import annotations

import numpy as np
import pytest

try:  # moshikit's import, which leaves the process's torch thread count alone (pocket_tts sets 1)
    from moshikit.tts.pocket import import_pocket_tts, one_thread

    import_pocket_tts()
    import tokenizers  # noqa: F401
except ImportError:
    pytest.skip("pocket-tts is not installed", allow_module_level=True)

from moshikit.errors import ModelError, UsageError  # noqa: E402
from moshikit.tts.engine import Settings  # noqa: E402
from moshikit.tts.text import Chunk, chunks  # noqa: E402


@pytest.fixture(scope="module")
def pocket(_isolated_env):
    import torch

    from moshikit.tts import load_tts

    before = torch.get_num_threads()
    yield load_tts("synthetic", backend="pocket")
    torch.set_num_threads(before)


def speak(model, text, **kw):
    got = []
    speech = model.generate(list(chunks([text])), [model.resolve_voice(kw.pop("voice", None))], Settings(**kw),
                            on_pcm=got.append)
    return speech, (np.concatenate(got) if got else np.zeros(0, np.float32))


def test_layout_and_interface(pocket):
    from moshikit.backends.base import TTSBackend

    folder = pocket.files.folder
    assert (folder / "config.yaml").is_file()
    assert (folder / "languages/english/model.safetensors").is_file()
    assert (folder / "languages/english/tokenizer.json").is_file()
    assert isinstance(pocket, TTSBackend)
    assert (pocket.sample_rate, pocket.n_q, pocket.multi_speaker, pocket.backend) == (24000, 0, False, "pocket")
    assert pocket.default_temp == 0.3
    from safetensors import safe_open

    with safe_open(str(folder / "languages/english/model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"flow_lm.speaker_proj_weight", "flow_lm.bos_before_voice", "flow_lm.conditioner.embed.weight"} <= keys
    assert any(k.startswith("mimi.decoder.") for k in keys)


def test_equals_pocket_tts_own_api_sample_for_sample(pocket):
    import torch

    text = "Hello there, how are you today?"
    speech, ours = speak(pocket, text, temp=0.3, seed=7)
    tts = pocket.tts
    state = tts.get_state_for_audio_prompt(pocket.files.voices_dir / "alba.safetensors")
    tts.max_decoder_frames_per_call = 1
    torch.manual_seed(7)
    with one_thread():  # moshikit speaks on one torch thread: the same kernels in the same order
        theirs = tts.generate_audio(state, text).numpy()
    assert ours.dtype == np.float32 and ours.size == theirs.size > 0
    np.testing.assert_array_equal(ours, np.clip(theirs, -1, 1))
    assert speech.samples == ours.size and speech.characters == len(text)
    assert speech.steps == speech.frames == ours.size // 1920 and speech.first_audio > 0


def test_sentences_continue_one_stream_and_seeds_repeat(pocket):
    import torch

    text = "One sentence here. Another one follows!"
    _, a = speak(pocket, text, temp=0.3, seed=3)
    _, b = speak(pocket, text, temp=0.3, seed=3)
    _, c = speak(pocket, text, temp=0.3, seed=4)
    np.testing.assert_array_equal(a, b)
    assert a.size == c.size and not np.array_equal(a, c)
    # each sentence is one generate_audio call of pocket-tts, the generator running on
    tts = pocket.tts
    state = tts.get_state_for_audio_prompt(pocket.files.voices_dir / "alba.safetensors")
    torch.manual_seed(3)
    with one_thread():  # as moshikit speaks (another thread count sums in another order)
        parts = [tts.generate_audio(state, s).numpy() for s in ("One sentence here.", "Another one follows!")]
    np.testing.assert_array_equal(a, np.clip(np.concatenate(parts), -1, 1))


def test_streamed_words_are_regrouped_into_sentences(pocket):
    from moshikit.tts.text import words_as_they_come

    words = words_as_they_come(iter(["One sen", "tence here. Another ", "one follows!"]))
    got = []
    pocket.generate(words, [pocket.resolve_voice(None)], Settings(temp=0.3, seed=3), on_pcm=got.append)
    _, whole = speak(pocket, "One sentence here. Another one follows!", temp=0.3, seed=3)
    np.testing.assert_array_equal(np.concatenate(got), whole)


def test_break_is_silence(pocket):
    _, plain = speak(pocket, "Hello there.", temp=0.3, seed=1)
    _, paused = speak(pocket, 'Hello there. <break time="0.5s"/>', temp=0.3, seed=1)
    assert paused.size == plain.size + 12000
    assert not paused[-12000:].any()


def test_voice_cloning_from_a_wav(pocket, tmp_path, speech, write_wav):
    wav = write_wav(tmp_path / "me.wav", speech[10 * 24000:13 * 24000])
    voice = pocket.resolve_voice(str(wav))
    assert voice.kind == "audio"
    _, cloned = speak(pocket, "Hello there.", voice=str(wav), temp=0.3, seed=1)
    _, alba = speak(pocket, "Hello there.", temp=0.3, seed=1)
    assert cloned.size == alba.size and not np.array_equal(cloned, alba)
    # the clip the synthetic "alba" state was computed from (a float wav, which pocket-tts's own
    # reader refuses) clones to exactly alba
    same = write_wav(tmp_path / "alba.wav", speech[: 3 * 24000])
    _, again = speak(pocket, "Hello there.", voice=str(same), temp=0.3, seed=1)
    np.testing.assert_array_equal(again, alba)


def test_voice_errors(pocket, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    with pytest.raises(UsageError, match="not an audio file"):
        pocket.resolve_voice(str(bad))
    with pytest.raises(UsageError, match="unknown voice 'albaa'") as exc:
        pocket.resolve_voice("albaa")
    assert "alba" in exc.value.hint
    with pytest.raises(UsageError, match="no such voice file"):
        pocket.resolve_voice(str(tmp_path / "missing.wav"))


def test_what_pocket_cannot_do(pocket):
    with pytest.raises(UsageError, match="--cfg 3: Pocket TTS has no classifier-free guidance"):
        speak(pocket, "Hello.", cfg=3.0)
    with pytest.raises(UsageError, match="--speed"):
        speak(pocket, "Hello.", padding_bonus=-2.0)
    with pytest.raises(UsageError, match="characters this model cannot speak"):
        speak(pocket, "Hello ж.")
    with pytest.raises(UsageError, match="nothing to say"):
        pocket.generate([Chunk('<break time="0.2s"/>')], [pocket.resolve_voice(None)], Settings())


def test_cloning_refused_on_open_weights(pocket, tmp_path, speech, write_wav, monkeypatch):
    """The gated weights could not be had: a voice sample is one line saying why and what to do."""
    from dataclasses import replace

    from moshikit.tts.pocket import PocketModel

    wav = write_wav(tmp_path / "me.wav", speech[:24000])
    files = replace(pocket.files, cloning=False, no_cloning="kyutai/pocket-tts is gated")
    model = PocketModel(pocket.tts, files)
    with pytest.raises(UsageError) as exc:
        model.resolve_voice(str(wav))
    assert "kyutai/pocket-tts is gated" in str(exc.value)
    assert "huggingface.co/kyutai/pocket-tts" in exc.value.hint and "hf auth login" in exc.value.hint
    assert model.resolve_voice("alba").kind == "state"  # predefined voices still work


def test_published_model_falls_back_and_says_why(tmp_path, monkeypatch):
    """Offline with only the open repo cached: loaded from it, cloning off with the reason."""
    from huggingface_hub import constants

    from moshikit.synthetic.core import place_in_hf_cache
    from moshikit.tts import pocket as P

    src = tmp_path / "open" / "languages" / "english"
    src.mkdir(parents=True)
    (src / "model.safetensors").write_bytes(b"weights")
    (src / "tokenizer.json").write_text("{}")
    cache = tmp_path / "hub"
    place_in_hf_cache(tmp_path / "open", P.OPEN_REPO, cache)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    files = P.locate("pocket-tts")
    assert not files.cloning and P.GATED_REPO in files.no_cloning
    text = files.config.read_text()
    assert "models--kyutai--pocket-tts-without-voice-cloning" in text and "weights_path_without" not in text
    place_in_hf_cache(tmp_path / "open", P.GATED_REPO, cache)
    assert P.locate("pocket").cloning
    with pytest.raises(ModelError, match="not in the cache"):
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
        P.locate("pocket-tts")


def test_model_name_picks_the_backend():
    from moshikit.tts import pocket_backend

    assert pocket_backend("pocket-tts", None) == "pocket" and pocket_backend("pocket", "auto") == "pocket"
    assert pocket_backend("tts", None) is None
    with pytest.raises(UsageError, match="runs on the pocket backend"):
        pocket_backend("pocket", "torch")
    with pytest.raises(ModelError, match="not a Pocket TTS model"):
        from moshikit.tts.pocket import locate

        locate("tts")


def test_gated_repo_through_the_hub(monkeypatch, tmp_path):
    """Online, kyutai/pocket-tts gated (terms not accepted): `download` says so in one line, and the
    pocket backend loads the open weights and says why it cannot clone."""
    from hubserver import HubServer, patch_hub

    from moshikit import download as dl
    from moshikit.tts import pocket as P

    server = HubServer().start()
    try:
        patch_hub(monkeypatch, server, tmp_path / "hub")
        files = {"languages/english/model.safetensors": b"weights", "languages/english/tokenizer.json": b"{}",
                 "languages/english/embeddings/alba.safetensors": b"state"}
        server.add(P.GATED_REPO, {"languages/english/model.safetensors": b"gated weights"})
        server.add(P.OPEN_REPO, files)
        server.gated.add(P.GATED_REPO)
        with pytest.raises(ModelError, match="kyutai/pocket-tts is gated: accept its conditions"):
            dl.download(dl.plan("pocket-tts"))
        got = dl.download(dl.plan("pocket-tts-open"))
        assert sorted(f.name for f in got.files) == sorted(files)
        found = P.locate("pocket-tts")
        assert not found.cloning and "kyutai/pocket-tts is gated" in found.no_cloning
        assert "pocket-tts-without-voice-cloning" in found.config.read_text()
        opened = P.locate("pocket-tts-open")
        assert not opened.cloning and opened.name == "pocket-tts-open"
        server.gated.clear()
        assert P.locate("pocket-tts").cloning
    finally:
        from huggingface_hub.utils import reset_sessions

        server.stop()
        reset_sessions()


def test_names_match_pocket_tts_own_config():
    """The repos, file names and voice names moshikit uses are those pocket-tts 4.0.1 reads."""
    import re

    import yaml
    from pocket_tts.models.tts_model import VOICE_CLONING_UNSUPPORTED
    from pocket_tts.utils.config import CONFIGS_DIR

    from moshikit import catalog
    from moshikit.tts import pocket as P

    cfg = yaml.safe_load((CONFIGS_DIR / "english.yaml").read_text())
    assert cfg["weights_path"].startswith(f"hf://{P.GATED_REPO}/{P.WEIGHTS}@")
    assert cfg["weights_path_without_voice_cloning"].startswith(f"hf://{P.OPEN_REPO}/{P.WEIGHTS}@")
    assert cfg["flow_lm"]["lookup_table"]["tokenizer_path"].startswith(f"hf://{P.OPEN_REPO}/{P.TOKENIZER}@")
    listed = re.search(r"\[(.*?)\]", VOICE_CLONING_UNSUPPORTED).group(1)
    assert sorted(P.PREDEFINED_VOICES) == sorted(n.strip(" '") for n in listed.split(","))
    gated, open_ = catalog.by_repo(P.GATED_REPO), catalog.by_repo(P.OPEN_REPO)
    assert gated.files[0] == open_.files[0] == P.WEIGHTS and f"hf://{P.OPEN_REPO}/{P.TOKENIZER}" in gated.files
    assert P.TOKENIZER in open_.files and "GATED" in gated.notes and "GATED" not in open_.notes


def test_no_model_on_a_cpu_machine_is_pocket_tts(monkeypatch):
    """`speak "..."` with no --model on a machine without a GPU runs Pocket TTS (made for CPUs) when it is
    installed; a named Kyutai model, a GPU, or pocket missing keep the platform's backend."""
    from dataclasses import replace

    from moshikit import platform
    from moshikit.backends import registry
    from moshikit.tts import tts_choice

    cpu = replace(platform.detect(gpus=False), apple_silicon=False, cuda=[], mps=False)
    cuda = replace(cpu, cuda=[platform.GPU(0, "L4", 24.0)])
    monkeypatch.setattr(platform, "is_apple_silicon", lambda: False)
    monkeypatch.setattr(registry, "probe", lambda kind, name: (True, "x"))
    monkeypatch.setattr(platform, "detect", lambda gpus=True: cpu)
    backend = lambda model, b: tts_choice(model, b, None).backend  # noqa: E731
    assert backend(None, None) == "pocket" and backend(None, "auto") == "pocket"
    # A Kyutai TTS --model runs on moshikit's CPU engine (torch where the engine cannot load).
    assert backend("synthetic", None) == "cpu" and backend("tts", "auto") == "cpu"
    assert backend(None, "torch") == "torch" and backend("pocket-tts", None) == "pocket"
    assert tts_choice(None, None, None) == platform.default_tts(cpu)  # what `moshikit info` shows
    monkeypatch.setattr(platform, "detect", lambda gpus=True: cuda)
    assert tts_choice(None, None, None) == platform.Choice("torch", "cuda", "CUDA GPU found (L4)")
    monkeypatch.setattr(platform, "detect", lambda gpus=True: cpu)
    monkeypatch.setattr(registry, "probe", lambda kind, name: (name != "pocket", "not installed"))
    assert backend(None, None) == "cpu"
    monkeypatch.setattr(registry, "probe", lambda kind, name: (name not in ("pocket", "cpu"), "not installed"))
    assert backend(None, None) == "torch"


def test_pocket_leaves_the_process_thread_count_alone(tmp_path, _isolated_env):
    """pocket_tts's import sets torch to one thread for the whole process; moshikit's import and
    generation put the count back (a fresh process: this one imported pocket_tts already)."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(2)\n"
            "from moshikit.tts.pocket import import_pocket_tts; import_pocket_tts()\n"
            "assert torch.get_num_threads() == 2, torch.get_num_threads()\n"
            "import pocket_tts; from moshikit.tts import load_tts, chunks\n"
            "m = load_tts('synthetic', backend='pocket')\n"
            "m.generate(chunks(['Hi.']), [m.resolve_voice(None)], None)\n"
            "assert torch.get_num_threads() == 2, torch.get_num_threads()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_generation_stopped_by_its_caller_ends_pocket_tts_threads(pocket):
    """A barge-in or a client gone raises from ``on_pcm``: pocket-tts's own generation and decoding
    threads stop too (before the fix they ran to the text's end, and a process leaving while they
    ran aborted in C++: "terminate called without an active exception")."""
    import threading
    import time

    class Stop(Exception):
        pass

    def on_pcm(_pcm):
        raise Stop

    def pocket_threads():
        return [t for t in threading.enumerate()
                if t.is_alive() and ("run_generation" in t.name or "_decode_audio_worker" in t.name)]

    # One sentence the synthetic model speaks in ~3 s of wall time (one call of pocket-tts's generator).
    text = ("Hello there, this is a long enough sentence to speak for a while, and it goes on and on "
            "without a stop for many more words than before")
    with pytest.raises(Stop):
        pocket.generate(chunks([text]), [pocket.resolve_voice(None)], Settings(seed=0), on_pcm=on_pcm)
    deadline = time.monotonic() + 0.5  # the generation thread's last lines after its final frame
    while pocket_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pocket_threads() == []
