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


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]


def test_every_relative_link_and_image_resolves():
    broken = []
    for page in DOCS:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # code is not links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|mailto:|#", target):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def _shown_commands() -> list[tuple[str, str, list[str]]]:
    """(page, command, flags) for every `trajcli COMMAND …` the docs show, in code blocks and spans."""
    from trajcli.cli import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    shown = []
    for page in DOCS:
        text = page.read_text(encoding="utf-8")
        for line in re.findall(r"```.*?```|`[^`\n]+`", text, flags=re.S):
            for match in re.finditer(r"\btrajcli ([a-z]+)([^\n`|]*)", line):
                if match.group(1) in commands:
                    shown.append((page.name, match.group(1), re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", match.group(2))))
    return shown


def test_every_command_and_flag_shown_in_the_docs_exists():
    from helpers import run

    shown = _shown_commands()
    assert len(shown) > 50  # the pages do show the commands
    helps, missing = {}, []
    root = run(["--help"]).stdout
    for page, command, flags in shown:
        if command not in helps:
            helps[command] = run([command, "--help"]).stdout
        for flag in flags:
            if flag not in helps[command] and flag not in root:
                missing.append(f"{page}: trajcli {command} {flag}")
    assert missing == []


def test_the_docs_define_what_a_newcomer_asks():
    """Where to find MDS, how to add an architecture, the API snippet, and a field table per schema."""
    measures = (ROOT / "docs" / "measures.md").read_text()
    assert "## Mean directional similarity (MDS, ω)" in measures and "arXiv:2403.07379" in measures
    assert "## How to add an architecture" in (ROOT / "docs" / "architectures.md").read_text()
    assert 'trajcli.open("runs/out")' in (ROOT / "docs" / "api.md").read_text()
    outputs = (ROOT / "docs" / "outputs.md").read_text()
    from trajcli import analysis
    from trajcli.comparison import COMPARE_SCHEMA

    for schema in (analysis.SIMILARITY_SCHEMA, analysis.LAYERS_SCHEMA, analysis.QKV_SCHEMA, analysis.DYNAMICS_SCHEMA,
                   analysis.CURVATURE_SCHEMA, analysis.REPORT_SCHEMA, COMPARE_SCHEMA):
        assert f"### `{schema}`" in outputs, schema


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    diary = re.compile(r"afternoon|evening|last time|last timed|this session|previous session|yesterday", re.I)
    for page in DOCS:
        assert not diary.search(page.read_text(encoding="utf-8")), page
