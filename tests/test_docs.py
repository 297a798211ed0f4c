"""The README's two set-up commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_has_exactly_two_setup_commands():
    install_and_run, install_and_test = _quick_start_commands()
    assert install_and_run.endswith("trajcli demo")
    assert "pytest" in install_and_test


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _quick_start_commands()[1] in ci


def test_no_file_points_outside_the_repository():
    """The docs define every measure and format themselves: no pointer to notes kept outside it."""
    outside = re.compile("|".join(["\\.\\./" + "shared", "METRICS" + "\\.md", "FORMATS" + "\\.md", "GUIDE" + "\\.md"]))
    skip = {".git", ".venv", "__pycache__", "build", "dist", "trajcli-demo"}
    found = []
    for path in ROOT.rglob("*"):
        if path.suffix not in (".py", ".md", ".json", ".toml", ".txt") or path.name == "CHANGELOG.md":
            continue
        if skip.intersection(path.relative_to(ROOT).parts) or ".egg-info" in str(path):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if outside.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}")
    assert found == []
