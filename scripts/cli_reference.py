"""Render docs/cli.md: every command's --help, exactly as the Typer app prints it.

    python scripts/cli_reference.py          # rewrite docs/cli.md
    python scripts/cli_reference.py --check  # exit 1 when docs/cli.md is stale

The MkDocs build renders the page afresh through scripts/mkdocs_hooks.py, so the site cannot
disagree with --help; tests/test_docs.py checks that the committed file is current too."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "cli.md"
WIDTH = 100  # columns the help is laid out for (fixed, so the page does not depend on the terminal)

HEAD = """# CLI reference

Every command's `--help`, generated from the Typer app by `scripts/cli_reference.py` (the site
build renders it afresh, and a test fails when this file is stale). The pages beside this one
explain each command; this is the exact list of options.
"""


def commands(group, path=()):
    """(path, has_subcommands) for the app and every command under it, in --help order."""
    import typer

    ctx = typer.Context(group, info_name="moshikit")
    yield path, hasattr(group, "list_commands")
    if hasattr(group, "list_commands"):
        for name in group.list_commands(ctx):
            sub = group.get_command(ctx, name)
            if sub is not None and not getattr(sub, "hidden", False):
                yield from commands(sub, (*path, name))


def _help(argv: list[str]) -> str:
    from moshikit.cli.app import main
    from moshikit.cli.output import Env

    buf = io.StringIO()
    environ = {**os.environ, "COLUMNS": str(WIDTH), "TERMINAL_WIDTH": str(WIDTH), "NO_COLOR": "1"}
    saved = {k: os.environ.get(k) for k in ("COLUMNS", "TERMINAL_WIDTH", "NO_COLOR")}
    os.environ.update({k: environ[k] for k in saved})
    try:
        with contextlib.redirect_stdout(buf):
            main([*argv, "--help"], Env(stdout=buf, environ=environ))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()).strip("\n")


def render() -> str:
    from moshikit.cli.app import command

    parts = [HEAD]
    for path, _ in commands(command()):
        title = " ".join(("moshikit", *path))
        parts.append(f"## `{title}`\n\n```text\n{_help(list(path))}\n```\n")
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if PAGE.read_text() != text:
            print(f"stale: run `python {Path(__file__).relative_to(ROOT)}`", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
