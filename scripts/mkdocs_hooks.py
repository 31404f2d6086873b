"""MkDocs hooks (mkdocs.yml `hooks:`): docs/cli.md is rendered afresh from the Typer app at build
time, so the site's CLI reference is always what `--help` prints."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "cli.md":
        return markdown
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from cli_reference import render
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return render()
