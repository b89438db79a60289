"""The README fits on a screen and its commands work: every command of its shell blocks is checked
as the site's are (``peerkd`` commands compose with ``--cfg job``; see ``docs_text.check_command``),
and every link resolves. The site's pages are tested in test_docs.py."""

import pytest
from docs_text import README, ROOT, anchors, check_command, links, program, shell_commands

TEXT = README.read_text()
COMMANDS = shell_commands(TEXT)


def test_the_readme_fits_on_a_screen():
    assert len(TEXT.splitlines()) <= 150


def test_the_readme_shows_the_set_up_and_the_three_jobs():
    # Assert: install, the default comparison, the tests; fleets, devices, peer vs teacher.
    peerkd = [c[1] for c in COMMANDS if program(c) == "peerkd"]
    assert {"compare", "run", "sweep"} <= set(peerkd)
    assert any(program(c) == "peerkd-deploy" for c in COMMANDS)
    assert ["python3", "-m", "venv", ".venv"] in COMMANDS and any("pytest" in c for c in COMMANDS)
    assert "| peer |" in TEXT and "![" in TEXT


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_every_readme_command_is_checked(words):
    # Execute / Assert: composes (peerkd), parses (peerkd-deploy), or has a reason not to run.
    assert check_command(words)


def test_readme_links_resolve():
    # Every in-page link names a heading (GitHub's anchors); every linked file exists, and a link
    # into a page with a #fragment names one of that page's headings.
    targets = links(TEXT)
    assert any(t.startswith("docs/") for t in targets)
    for target in targets:
        path, _, fragment = target.partition("#")
        if not path:
            assert fragment in anchors(TEXT), target
            continue
        assert (ROOT / path).exists(), target
        if fragment:
            assert fragment in anchors((ROOT / path).read_text()), target
