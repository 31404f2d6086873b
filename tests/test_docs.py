"""The documentation: the MkDocs site builds with --strict (a broken link or anchor fails), its CLI
reference is the app's own --help, and the README is a front page whose links all lead somewhere."""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import cli_reference  # noqa: E402  (scripts/ is not a package)

sys.path.remove(str(ROOT / "scripts"))


def test_the_site_builds_strictly(tmp_path):
    """mkdocs.yml's validation turns unknown pages and anchors into warnings, --strict into a failure."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    page = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "moshikit bench tts" in page and "--synthetic" in page  # rendered by the hook from the app


def test_a_broken_anchor_fails_the_build(tmp_path):
    """The check above can fail: a copy of the docs with one bad anchor does not build."""
    import shutil

    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    config = (ROOT / "mkdocs.yml").read_text()
    (tmp_path / "mkdocs.yml").write_text(config.replace("hooks:\n  - scripts/mkdocs_hooks.py\n", ""))  # faster
    (tmp_path / "docs" / "chat.md").write_text("# Chat\n\nSee [faults](faults.md#no-such-section).\n")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode != 0 and "no-such-section" in res.stdout + res.stderr


def test_cli_reference_is_current():
    assert (ROOT / "docs" / "cli.md").read_text() == cli_reference.render(), \
        "stale: run `python scripts/cli_reference.py`"


def test_cli_reference_has_every_command():
    from moshikit.cli.app import command

    text = (ROOT / "docs" / "cli.md").read_text()
    for path, _ in cli_reference.commands(command()):
        assert f"## `{' '.join(('moshikit', *path))}`" in text


def _github_slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_is_a_front_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    assert "bash scripts/test.sh" in text  # the test command CI runs
    assert ".venv/bin/moshikit encode moshikit/data/sample.flac --model synthetic -o out/" in text
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert len(links) > 15
    for link in links:
        if "://" in link:
            continue
        target, _, anchor = link.partition("#")
        path = ROOT / target
        assert path.is_file(), link
        if anchor:
            headings = [_github_slug(h) for h in re.findall(r"^#+ (.*)$", path.read_text(), flags=re.M)]
            assert anchor in headings, link


def test_readme_has_an_example_of_every_command():
    from moshikit.cli.app import command

    text = (ROOT / "README.md").read_text()
    for path, _ in cli_reference.commands(command()):
        if len(path) == 1:
            assert f"moshikit {path[0]}" in text, path[0]


def test_every_test_the_fault_table_names_exists():
    """Each row of docs/faults.md's reliability table names the test that proves it."""
    text = (ROOT / "docs" / "faults.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| fault")
            and not line.startswith("| ---")]
    assert len(rows) >= 19
    defined = {}
    for f in (ROOT / "tests").rglob("test_*.py"):
        defined[f.relative_to(ROOT).as_posix()] = set(re.findall(r"^\s*(?:async )?def (test_\w+)", f.read_text(),
                                                                    flags=re.M))
    everywhere = set().union(*defined.values())
    for row in rows:
        names = re.findall(r"`((?:tests/[\w/]+\.py::)?test_[\w*]+)`", row.rsplit("|", 2)[-2])
        assert names, row
        for name in names:
            where, _, test = name.rpartition("::")
            pool = defined[where] if where else everywhere
            assert fnmatch.filter(pool, test), name
