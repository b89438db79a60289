"""The README's commands work: every `peerkd` command in its shell blocks composes, and the
"Your own data" recipe runs as written and prints what the README shows."""

import re
import shlex
from pathlib import Path

import pytest

from simulations.cli import main

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _blocks(text: str, lang: str) -> list[str]:
    """The bodies of the fenced blocks of ``text`` opened with ``lang`` (``""``: no language)."""
    blocks, body, current = [], [], None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, body = line[3:].strip(), []
            else:
                if current == lang:
                    blocks.append("\n".join(body) + "\n")
                current = None
        elif current is not None:
            body.append(line)
    return blocks


def _commands(block: str) -> list[list[str]]:
    """The `peerkd ...` command lines of a shell block, as argument lists (comments dropped)."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0].endswith("peerkd"):
            out.append(words[1:])
    return out


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    return README[start : README.index("\n## ", start + 1)]


CONFIG_COMMANDS = [c for block in _blocks(README, "bash") for c in _commands(block) if c[0] != "report"]


def test_the_readme_has_commands_to_check():
    assert len(CONFIG_COMMANDS) >= 10
    assert {c[0] for c in CONFIG_COMMANDS} >= {"run", "compare", "sweep", "bench"}


@pytest.mark.parametrize("args", CONFIG_COMMANDS, ids=[" ".join(c)[:60] for c in CONFIG_COMMANDS])
def test_every_readme_command_composes(args, capsys):
    # Execute: the command with --cfg job (prints the resolved config, runs nothing).
    code = main([*[a for a in args if a != "--cfg" and a != "job"], "--cfg", "job"])
    # Assert
    assert code == 0, capsys.readouterr().err
    assert "strategy:" in capsys.readouterr().out


def test_own_data_recipe_runs_and_prints_what_the_readme_shows(tmp_path, monkeypatch, capsys):
    # Prepare: the recipe's Python block writes wine.csv in a fresh directory.
    section = _section("Your own data")
    (script,) = _blocks(section, "python")[:1]
    commands = _commands(_blocks(section, "bash")[0])
    monkeypatch.chdir(tmp_path)
    exec(compile(script, "make_wine_csv.py", "exec"), {"__name__": "__main__"})
    assert (tmp_path / "wine.csv").read_text().count("\n") == 179  # header + 178 rows
    # Execute: the recipe's commands as written.
    codes = [main(args) for args in commands]
    out, err = capsys.readouterr()
    assert codes == [0] * len(commands), err
    # Assert: the split block is the README's, line for line; the table's accuracies agree.
    sample = _blocks(section, "")[0]
    splits = [line for line in sample.splitlines() if line.startswith(("wine:", "  "))]
    assert len(splits) == 6 and [line for line in splits if line not in out] == [], out
    for row in re.findall(r"^\| (local|teacher|peer) +\| (0\.\d+)", sample, flags=re.M):
        rule, acc = row
        printed = re.search(rf"│ {rule} +│ (0\.\d+)", out)
        assert printed and abs(float(printed.group(1)) - float(acc)) < 0.05, (rule, acc, printed)
    assert (tmp_path / "runs" / "wine" / "report.md").is_file()
    assert "wine, 3 clients" in (tmp_path / "runs" / "wine" / "comparison.md").read_text()


def test_readme_links_resolve():
    # Every in-page link names a heading (GitHub's anchors), and every linked file exists.
    root = Path(__file__).resolve().parents[2]
    anchors = {
        re.sub(r"[^\w\- ]", "", h.lower().replace("`", "")).replace(" ", "-")
        for h in re.findall(r"^#{1,6} (.+)$", README, flags=re.M)
    }
    assert {a for a in re.findall(r"\]\(#([^)]+)\)", README)} <= anchors
    files = re.findall(r"\]\(((?:docs/|LICENSE|CITATION)[^)#]*)\)", README)
    assert files and all((root / f).exists() for f in files)
