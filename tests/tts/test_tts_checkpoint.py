"""The synthetic TTS checkpoint has the published layout of kyutai/tts-1.6b-en_fr, and the catalog,
resolver and download know Kyutai's TTS repos."""

from __future__ import annotations

import json

import pytest

from moshikit import catalog, hub
from moshikit.cli.app import main
from moshikit.synthetic import tts as synthetic_tts

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # a tiny model: threads only cost


def test_synthetic_tts_layout(mimi_weights):
    path = hub.resolve_model("synthetic", kind="tts").path
    assert path == synthetic_tts.ensure_synthetic_tts()
    config = json.loads((path / "config.json").read_text())
    # The keys moshi's CheckpointInfo/TTSModel and Kyutai's Rust server read, as published.
    assert config["model_type"] == "tts"
    assert config["tts_config"] == {"audio_delay": 1.28, "second_stream_ahead": 2}
    assert config["model_id"] == {"sig": "synthetic", "epoch": 0}
    assert set(config["conditioners"]) == {"speaker_wavs", "cfg", "control"}
    assert config["conditioners"]["speaker_wavs"]["type"] == "tensor"
    assert config["conditioners"]["cfg"]["lut"]["possible_values"] == ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]
    assert config["fuser"] == {"cross_attention_pos_emb": True, "cross_attention_pos_emb_scale": 1,
                               "sum": ["control", "cfg"], "prepend": [], "cross": ["speaker_wavs"]}
    assert config["demux_second_stream"] and config["cross_attention"] and config["dep_q"] == config["n_q"]
    assert config["delays"] == [0, 0] + [2] * (config["n_q"] - 1)
    assert config["moshi_name"] == "dsm_tts_synthetic@0.safetensors"
    assert config["tokenizer_name"] == "tokenizer_spm_8k_en_fr_audio.model"
    for key in ("moshi_name", "mimi_name", "tokenizer_name"):
        assert (path / config[key]).is_file()
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path / config["tokenizer_name"]))
    assert sp.get_piece_size() == config["text_card"]  # exactly text_card pieces
    assert sp.unk_id() not in sp.encode("Hello, how are you? Très bien, merci !")
    # Voices in the tts-voices layout: the clip and its embedding <name>.<sig>@<epoch>.safetensors.
    from safetensors import safe_open

    voice = path / "voices" / (synthetic_tts.DEFAULT_VOICE + ".synthetic@0.safetensors")
    with safe_open(str(voice), "pt") as f:
        emb = f.get_tensor("speaker_wavs")
    assert emb.dim() == 3 and emb.shape[:2] == (1, config["conditioners"]["speaker_wavs"]["tensor"]["dim"])
    assert (path / "voices" / synthetic_tts.DEFAULT_VOICE).is_file()


def test_moshi_loads_it_as_a_tts_model(tts_model):
    tts = tts_model.tts
    assert tts_model.multi_speaker and tts.delay_steps == 16  # 1.28 s at 12.5 Hz
    assert tts.voice_suffix == ".synthetic@0.safetensors"
    assert sorted(tts.valid_cfg_conditionings) == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    assert tts.machine.second_stream_ahead == 2


def test_a_non_tts_checkpoint_is_one_line(mimi_weights):
    from moshikit.errors import ModelError
    from moshikit.tts import load_tts

    with pytest.raises(ModelError, match="is not a text-to-speech checkpoint .model_type 'stt'"):
        load_tts(str(hub.synthetic_checkpoint("stt")))


@pytest.mark.parametrize("name, repo, weights", [
    ("tts", "kyutai/tts-1.6b-en_fr", "dsm_tts_1e68beda@240.safetensors"),
    ("tts-public", "kyutai/tts-0.75b-en-public", "dsm_tts_d6ef30c7@1000.safetensors"),
    ("tts-voices", "kyutai/tts-voices", catalog.DEFAULT_TTS_VOICE + ".1e68beda@240.safetensors"),
])
def test_catalog_and_dry_run(name, repo, weights, capsys):
    code = main(["download", name, "--dry-run", "--json"])
    out = json.loads(capsys.readouterr().out)
    plan = out["models"][0] if "models" in out else out
    assert code == 0 and plan["repo"] == repo
    assert weights in [f["name"] for f in plan["files"]]
    code = main(["models", "--json"])
    listed = json.loads(capsys.readouterr().out)
    rows = listed["models"] if isinstance(listed, dict) else listed
    assert repo in {r["repo"] for r in rows}


def test_speak_refuses_a_model_of_another_kind():
    from moshikit.errors import ModelError

    with pytest.raises(ModelError, match="stt is a speech-to-text model; this command needs a text-to-speech"):
        hub.resolve_model("stt", kind="tts")
