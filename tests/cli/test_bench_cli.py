import json

from moshikit.cli.app import main


def test_bench_codec_json_and_compare(tmp_path, capsys, mimi_weights):
    args = ["bench", "codec", "--synthetic", "-b", "torch", "--no-reference", "--seconds", "1", "-n", "1",
            "--stream-frames", "2"]
    assert main(args + ["--json", str(tmp_path / "a.json")]) == 0
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["synthetic"] is True and {r["task"] for r in data["rows"]} >= {"encode", "decode", "stream encode+decode"}
    capsys.readouterr()
    assert main(args + ["--compare", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "x real time = audio seconds / wall seconds" in out and "speed-up" in out


def test_bench_bad_backend(capsys):
    assert main(["bench", "codec", "--synthetic", "-b", "nope"]) == 2
    assert "unknown codec backend 'nope'" in capsys.readouterr().err


def test_bench_codec_files_rows(tmp_path, capsys, mimi_weights):
    args = ["bench", "codec", "--synthetic", "-b", "torch", "--seconds", "0.5", "-n", "1",
            "--stream-frames", "0", "--files", "3x0.5", "--json", str(tmp_path / "f.json")]
    assert main(args) == 0
    rows = {(r["name"], r["task"]): r for r in json.loads((tmp_path / "f.json").read_text())["rows"]}
    for name in ("moshikit torch", "moshi MimiModel (reference)"):  # moshi's loop over the files is the reference
        for task in ("encode 3 files of 0.5 s", "encode 1 file of 1.5 s"):
            assert rows[name, task]["stats"]["n"] == 1 and rows[name, task]["stats"]["p50"] > 0
    assert not any("rustymimi" in name and "files" in task for name, task in rows)


def test_bench_codec_files_bad_spec(capsys):
    assert main(["bench", "codec", "--synthetic", "--files", "lots"]) == 2
    assert "--files takes COUNTxSECONDS" in capsys.readouterr().err


def _chat_default_name() -> str:
    from moshikit.platform import codec_beside_lm, default_lm

    lm = default_lm()
    return f"moshikit {codec_beside_lm(lm.backend, lm.device)}+{lm.backend}"


def test_bench_chat_defaults_to_what_chat_runs(tmp_path, mimi_weights):
    assert main(["bench", "chat", "--synthetic", "--frames", "1", "--json", str(tmp_path / "c.json")]) == 0
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert len(rows) == 2 and {r["name"] for r in rows} == {_chat_default_name()}


def test_quick_bench_chat_stage_is_what_chat_runs(tmp_path, monkeypatch, mimi_weights):
    """`moshikit bench --synthetic`: its chat stage runs chat's codec and LM (the codec and
    LM stages, timed elsewhere, are left out here to keep the test short)."""
    from moshikit import bench

    monkeypatch.setattr(bench, "bench_codec", lambda plan: iter(()))
    monkeypatch.setattr(bench, "bench_lm", lambda plan: iter(()))
    assert main(["bench", "--synthetic", "--json", str(tmp_path / "q.json")]) == 0
    (row,) = json.loads((tmp_path / "q.json").read_text())["rows"]
    assert row["stage"] == "chat" and row["name"] == _chat_default_name() and row["stats"]["n"] == 20
