"""Help reads like the tools users know, and every choice list comes from the registry."""

from __future__ import annotations

import re

import pytest

from moshikit.backends import registry
from moshikit.cli.app import command, main

CODEC_COMMANDS = {("encode",), ("decode",)}


def _commands(cmd=None, path=()):
    cmd = cmd or command()
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


ALL = [path for path, _ in _commands()]


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p) or "moshikit")
def test_help_names_values_and_leaves_flags_bare(path, capsys):
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert not re.search(r"<(bool|str|int|float|list)", out), out
    for word in ("BOOLEAN", "INTEGER", "FLOAT"):
        assert word not in out, out
    cmd = dict(_commands())[path]
    flags = [o for p in cmd.params if p.param_type_name == "option" and p.is_flag for o in p.opts if o[:2] == "--"]
    assert "--help" in out
    for flag in [*flags, "--help"]:
        line = next(x for x in out.splitlines() if re.match(rf"│ {flag}\b", x))
        # a flag takes no value: only its short form or --no- twin before its help text
        value = re.match(rf"│ {flag}\s+(?:--?[\w-]+\s+)*(\S+)", line).group(1)
        assert not value.isupper(), line


def test_value_options_have_names():
    named = {}
    for path, cmd in _commands():
        for p in cmd.params:
            if p.param_type_name == "option" and not p.is_flag and p.type.name != "choice":
                named[(path, p.name)] = p.metavar
    assert named[(("encode",), "output")] == "PATH"
    assert named[(("chat",), "record")] == "DIR"
    assert named[(("download",), "revision")] == "REV"
    assert named[(("serve",), "port")] == "PORT"
    assert named[(("bench", "codec"), "files")] == "COUNTxSECONDS"
    assert all(v and v != "TEXT" for v in named.values()), {k: v for k, v in named.items() if v in (None, "TEXT")}


def test_every_registered_backend_is_a_choice_of_every_backend_option():
    seen = 0
    for path, cmd in _commands():
        for p in cmd.params:
            if p.name == "backend" and p.type.name == "choice":
                kind = "codec" if path in CODEC_COMMANDS else "lm"
                assert list(p.type.choices) == ["auto", *registry.names(kind)], path
                seen += 1
    assert seen == 6  # encode, decode, chat, serve, transcribe, translate
    assert "onnx" in registry.names("codec")


def test_onnx_backend_is_accepted_on_the_command_line(tmp_path, capsys, mimi_weights, speech, write_wav):
    wav = write_wav(tmp_path / "a.wav", speech[: 24000 * 2])
    code = main(["encode", str(wav), "-o", str(tmp_path / "a.mimi"), "--backend", "onnx", "--mimi-weight",
                 str(mimi_weights)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert (tmp_path / "a.mimi").stat().st_size > 0
    assert "codec: onnx on cpu" in err


def test_an_unknown_backend_names_the_registered_ones(capsys):
    assert main(["encode", "x.wav", "--backend", "nope"]) == 2
    err = capsys.readouterr().err
    for name in registry.names("codec"):
        assert name in err
