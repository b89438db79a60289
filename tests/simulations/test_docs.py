"""The documentation site (docs/, mkdocs.yml) works as written.

- Every command of every ```bash block of docs/**/*.md is checked, as the README's are
  (``docs_text.check_command``): ``peerkd run|compare|sweep|bench`` compose with ``--cfg job``
  (the resolved config, nothing run); ``peerkd report DIR`` takes one directory (the recipe runs
  it for real); ``peerkd-deploy`` commands parse with its argparse parser; ``flwr`` and ``ray``
  commands parse with their click parsers (nothing starts).
- Not run, with the reason: ``python3 -m venv`` and ``pip install`` (the environment these tests
  run in is that install; CI runs the same commands), ``python -m pytest`` (this suite),
  ``export`` (environment only), ``ssh`` (another machine), ``pid=$(pgrep ...)``, ``ps`` and
  ``kill`` (they find and stop a running local SuperLink: tests/deploy/test_flwr_run.py starts and
  stops one), ``mkdocs build`` (run by test_the_site_builds_strict).
- The "Your own data" recipe runs as written and prints what the page shows.
- Links and anchors resolve; every rule has a page whose settings are its constructor's.
- ``mkdocs build --strict`` passes (skipped where mkdocs is not installed: ``pip install -e '.[docs]'``).
"""

import importlib.util
import os
import re
import subprocess
import sys
import tomllib

import pytest
from docs_text import (
    DOCS,
    ROOT,
    anchors,
    blocks,
    check_command,
    command_lines,
    links,
    pages,
    program,
    section,
    shell_commands,
)

from simulations.cli import main
from strategies import RULES, rule_settings

PAGES = {p.relative_to(DOCS).as_posix(): p.read_text() for p in pages()}
COMMANDS = [(name, words) for name, text in PAGES.items() for words in shell_commands(text)]


def test_the_pages_have_commands_to_check():
    peerkd = [w for _, w in COMMANDS if program(w) == "peerkd"]
    assert len(peerkd) >= 40
    assert {w[1] for w in peerkd} >= {"run", "compare", "sweep", "bench", "report"}
    assert {program(w) for _, w in COMMANDS} >= {"peerkd-deploy", "flwr", "ray"}


@pytest.mark.parametrize("words", [w for _, w in COMMANDS], ids=[f"{n}: {' '.join(w)}"[:80] for n, w in COMMANDS])
def test_every_docs_command_is_checked(words):
    # Execute / Assert: composes (peerkd), parses (peerkd-deploy, flwr, ray), or has a reason not to run.
    assert check_command(words)


def test_the_node_config_example_is_toml():
    # Prepare: the deploy page's TOML block (the flwr CLI's config file).
    (toml,) = blocks(PAGES["deploy.md"], "toml")
    # Assert
    assert tomllib.loads(toml)["superlink"]["default"] == "peerkd"


def test_own_data_recipe_runs_and_prints_what_the_page_shows(tmp_path, monkeypatch, capsys):
    # Prepare: the recipe's Python block writes wine.csv in a fresh directory.
    text = PAGES["own-data.md"]
    (script,) = blocks(text, "python")[:1]
    commands = [w[1:] for w in command_lines(blocks(text, "bash")[0])]
    assert [w[0] for w in commands] == ["compare", "report"]
    monkeypatch.chdir(tmp_path)
    exec(compile(script, "make_wine_csv.py", "exec"), {"__name__": "__main__"})
    assert (tmp_path / "wine.csv").read_text().count("\n") == 179  # header + 178 rows
    # Execute: the recipe's commands as written.
    codes = [main(args) for args in commands]
    out, err = capsys.readouterr()
    assert codes == [0] * len(commands), err
    # Assert: the split block is the page's, line for line; the table's accuracies agree.
    sample = blocks(text, "")[0]
    splits = [line for line in sample.splitlines() if line.startswith(("wine:", "  "))]
    assert len(splits) == 6 and [line for line in splits if line not in out] == [], out
    for row in re.findall(r"^\| (local|teacher|peer) +\| (0\.\d+)", sample, flags=re.M):
        rule, acc = row
        printed = re.search(rf"│ {rule} +│ (0\.\d+)", out)
        assert printed and abs(float(printed.group(1)) - float(acc)) < 0.05, (rule, acc, printed)
    assert (tmp_path / "runs" / "wine" / "report.md").is_file()
    assert "wine, 3 clients" in (tmp_path / "runs" / "wine" / "comparison.md").read_text()


@pytest.mark.parametrize("name", sorted(PAGES))
def test_links_resolve(name):
    # Every link stays inside docs/ (the site has nothing else), names a file that exists and,
    # with a #fragment, a heading of that page (GitHub's anchors, which mkdocs.yml's slugify matches).
    here = (DOCS / name).parent
    for target in links(PAGES[name]):
        path, _, fragment = target.partition("#")
        page = (here / path).resolve() if path else DOCS / name
        assert page.is_relative_to(DOCS) and page.exists(), target
        if fragment:
            assert fragment in anchors(page.read_text()), target


@pytest.mark.parametrize("name", sorted(PAGES))
def test_lists_follow_a_blank_line(name):
    # The site's Markdown (unlike GitHub's) reads a list right after a paragraph as more paragraph.
    item, fence, paragraph = re.compile(r"(- |\* |\d+\. )"), False, []
    for line in PAGES[name].splitlines():
        if line.lstrip().startswith("```"):
            fence, paragraph = not fence, paragraph if line.startswith(" ") else []  # indented: in a list item
        elif not fence and item.match(line):
            assert not paragraph or any(item.match(p) for p in paragraph), f"{name}: no blank line before {line!r}"
            paragraph.append(line)
        elif not fence:
            paragraph = [*paragraph, line] if line.strip() else []


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_rule_has_a_page_with_its_settings(rule):
    # Prepare: the rule's page and its constructor's settings.
    text = PAGES[f"rules/{rule}.md"]
    settings = rule_settings(rule)
    # Assert: listed in the nav; its settings table is the constructor's, key for key.
    assert f"rules/{rule}.md" in (ROOT / "mkdocs.yml").read_text()
    rows = re.findall(r"^\| `strategy\.(\w+)` \| `([^`]*)` \|", section(text, "Settings"), flags=re.M)
    assert rows == [(key, str(default)) for key, (_, default) in settings.items()]
    if not settings:
        assert "takes no settings" in section(text, "Settings")
    for label in ("Sends up", "Receives", "Paper"):
        assert f"- **{label}:** " in text


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_measured_row_is_a_measured_row(rule):
    # A rule page's measured rows are copied from the measured tables, never made up.
    measured = PAGES["studies/default-comparison.md"]
    row = re.compile(r"^(\| [a-z_]+(?: \(non-private\))? \| 0\.\d{3} ± .*)\|$", flags=re.M)
    rows = row.findall(section(PAGES[f"rules/{rule}.md"], "Measured"))
    assert rows or rule == "peer_sum"  # peer_sum gives peer's numbers (tested), no row of its own
    for row in rows:
        assert row.split(" | ")[0] in (f"| {rule}", "| oracle (non-private)")
        assert any(line.startswith(row) for line in measured.splitlines()), row


def test_the_site_builds_strict(tmp_path):
    # Skipped without the docs extra (pip install -e '.[docs]'); CI installs it.
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            pytest.skip(f"{module} is not installed: pip install -e '.[docs]' builds the site")
    # Execute: the build CI runs, offline, into a temporary directory.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    # Assert: no warning (strict), every rule page built, nothing fetched from Google's fonts.
    assert done.returncode == 0, done.stderr[-3000:]
    assert all((tmp_path / "site" / "rules" / f"{rule}.html").is_file() for rule in RULES)
    assert "fonts.googleapis" not in (tmp_path / "site" / "index.html").read_text()
