"""bench agent: the agent's turn latency parts over a spoken input against the scripted LLM server
(in a process of its own), next to the LLM's first token and the TTS's first audio each alone."""

from __future__ import annotations

import json

import pytest

from moshikit.bench.agent import AGENT, LLM_REFERENCE, PARTS, TTS_REFERENCE
from moshikit.cli.app import main


@pytest.mark.usefixtures("one_torch_thread")
def test_bench_agent_rows_and_their_parts_add_up(mimi_weights, tmp_path, capsys):
    out = tmp_path / "agent.json"
    code = main(["bench", "agent", "--synthetic", "--turns", "2", "--words", "4", "--tokens-per-second", "50",
                 "--first-token-delay", "0.1", "--json", str(out)])
    assert code in (0, None), capsys.readouterr().err
    data = json.loads(out.read_text())
    rows = {(r["name"], r["task"]): r for r in data["rows"]}
    assert set(rows) == {*((AGENT, task) for task in PARTS.values()), (LLM_REFERENCE, "request -> first token"),
                         (TTS_REFERENCE, "first token -> first audio")}
    for r in data["rows"]:
        assert r["stage"] == "agent" and r["unit"] == "ms" and r["params"]["load"] is not None
        assert r["stats"]["n"] == r["params"]["turns"] == 2  # both turns answered: no reply was spoken over
        assert r["params"]["tokens_per_second"] == 50 and r["params"]["first_token_delay"] == 0.1
    part = {key: rows[(AGENT, task)]["samples"] for key, task in PARTS.items()}
    for i in range(2):  # turn by turn, the parts add up to the wait (each part rounded to 1 ms: 3 roundings)
        assert part["end_of_speech_to_first_audio"][i] == pytest.approx(
            part["end_of_speech_to_end_of_turn"][i] + part["end_of_turn_to_first_token"][i]
            + part["first_token_to_first_audio"][i], abs=2.0)
        assert part["end_of_speech_to_end_of_turn"][i] == pytest.approx(800.0, abs=1.0)  # --synthetic: 0.8 s
        assert part["first_token_to_first_audio"][i] > 0
    # The scripted server waits 0.1 s before a first token: the agent's and the plain client's both include it.
    assert min(part["end_of_turn_to_first_token"]) >= 100.0
    assert min(rows[(LLM_REFERENCE, "request -> first token")]["samples"]) >= 100.0
    assert rows[(TTS_REFERENCE, "first token -> first audio")]["stats"]["p50"] > 0
    assert any("turns end on 0.8 s of silence" in n for n in data["notes"])
    assert data["env"]["tokens_per_second"] == 50


def test_bench_agent_input_that_is_not_audio(tmp_path, capsys):
    bad = tmp_path / "q.wav"
    bad.write_text("not audio")
    assert main(["bench", "agent", "--synthetic", "-i", str(bad)]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
