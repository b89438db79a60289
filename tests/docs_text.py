"""Reading the README and the site's pages as the tests need them: fenced blocks, the command lines
of shell blocks, headings as GitHub (and the site) turn them into anchors, and relative links."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
FENCE = re.compile(r"^\s*```")
SHELL_OPERATORS = {"&&", "||", ";", "|"}


def pages() -> list[Path]:
    """The site's Markdown pages, sorted."""
    return sorted(DOCS.rglob("*.md"))


def blocks(text: str, lang: str) -> list[str]:
    """The bodies of the fenced blocks of ``text`` opened with ``lang`` (``""``: no language);
    a fence may be indented (a block inside a list item), its body then loses that indent."""
    out, body, current, indent = [], [], None, 0
    for line in text.splitlines():
        if FENCE.match(line):
            if current is None:
                current, body = line.strip()[3:].strip(), []
                indent = len(line) - len(line.lstrip())
            else:
                if current == lang:
                    out.append("\n".join(body) + "\n")
                current = None
        elif current is not None:
            body.append(line[indent:] if line[:indent].isspace() else line)
    return out


def prose(text: str) -> str:
    """``text`` without its fenced blocks and inline code (what links and headings are read from)."""
    return "\n".join(re.sub(r"`[^`]*`", "", line) for line in prose_keep_code(text).split("\n"))


def command_lines(block: str) -> list[list[str]]:
    """The simple commands of a shell block as argument lists: continuations joined, comments
    dropped, ``a && b`` split in two, leading ``VAR=value`` assignments left out (an assignment
    from a command substitution, ``pid=$(...)``, stays: it is the command)."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        words, current = shlex.split(line, comments=True), []
        for word in [*words, ";"]:
            if word in SHELL_OPERATORS:
                while len(current) > 1 and re.match(r"^[A-Za-z_]\w*=(?!.*\$\()", current[0]):
                    current.pop(0)  # FLWR_HOME=... flwr ...: the command is flwr
                if current:
                    out.append(current)
                current = []
            else:
                current.append(word)
    return out


def program(words: list[str]) -> str:
    """The command's name without its path (``.venv/bin/peerkd`` -> ``peerkd``)."""
    return words[0].rsplit("/", 1)[-1]


def shell_commands(text: str) -> list[list[str]]:
    """Every command line of every ```bash block of ``text``."""
    return [c for block in blocks(text, "bash") for c in command_lines(block)]


def anchors(text: str) -> set[str]:
    """The anchors of ``text``'s headings, as GitHub makes them (and mkdocs.yml's slugify): lower
    case, punctuation dropped, spaces to hyphens; a repeated heading gets ``-1``, ``-2``..."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*#*$", prose_keep_code(text), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", "")).replace(" ", "-")
        n = seen.get(slug, 0)
        out.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    return out


def prose_keep_code(text: str) -> str:
    """``text`` without its fenced blocks (inline code kept: it is part of a heading's anchor)."""
    kept, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            kept.append(line)
    return "\n".join(kept)


def links(text: str) -> list[str]:
    """The relative link and image targets of ``text``'s prose (web and mail addresses left out)."""
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose(text))
    return [t for t in targets if not re.match(r"^[a-z]+:", t)]


def section(text: str, title: str) -> str:
    """The part of ``text`` under the ``## title`` heading, up to the next ``## `` heading."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : None if end < 0 else end]


# Commands the tests do not run, and why (a command of any other program fails the docs tests).
NOT_RUN = {
    "python3": "`python3 -m venv .venv` makes the virtualenv these tests already run in",
    "pip": "installs packages: the tests run in that install, and CI (.ci/run) runs the same pip commands",
    "python": "`python -m pytest -q` is this test suite itself",
    "export": "sets environment variables; nothing to check",
    "ssh": "opens a tunnel to another machine (not reachable from a test)",
    "pid": "finds the running local SuperLink with pgrep: a test starts none (tests/deploy/test_flwr_run.py does)",
    "ps": "lists the SuperLink's processes found by the line before it",
    "kill": "stops the SuperLink's process group found by the line before it",
    "mkdocs": "tests/simulations/test_docs.py::test_the_site_builds_strict runs `mkdocs build --strict` itself",
}


def check_command(words: list[str]) -> str:
    """Check one documented command without running anything: ``peerkd`` commands compose with
    ``--cfg job`` (``report DIR`` takes one directory), ``peerkd-deploy`` and ``flwr`` / ``ray``
    commands parse with their own argparse / click parsers. Returns what was checked; raises
    AssertionError (or the parser's error) when the command is wrong, and for unknown programs."""
    name = program(words).split("=", 1)[0]
    if name == "peerkd":
        return _compose_peerkd(words[1:])
    if name == "peerkd-deploy":
        from peerkd.deploy.cli import _parser

        args = [w.strip("[]") if w.startswith("[") or (w.endswith("]") and "[" not in w) else w for w in words[1:]]
        return f"parsed by peerkd-deploy's argparse: {vars(_parser().parse_args(args))['cmd']}"
    if name in ("flwr", "ray"):
        return _parse_click(name, words[1:])
    assert name in NOT_RUN, f"no check for {name!r} commands: add one, or a reason to NOT_RUN ({words})"
    return f"not run: {NOT_RUN[name]}"


def _compose_peerkd(args: list[str]) -> str:
    import contextlib
    import io

    from simulations.cli import main

    command = args[0]
    if command == "report":
        assert len(args) == 2, f"peerkd report takes one results directory, got {args}"
        return "report DIR: one directory (the 'Your own data' recipe runs peerkd report for real)"
    assert command in ("run", "compare", "sweep", "bench"), f"unknown peerkd command {command!r}"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*[a for a in args if a not in ("--cfg", "job")], "--cfg", "job"])
    assert code == 0, err.getvalue()
    assert "strategy:" in out.getvalue(), out.getvalue()
    return f"composed with --cfg job: peerkd {command}"


def _parse_click(name: str, args: list[str]) -> str:
    import click
    import typer

    if name == "flwr":
        from flwr.cli.app import app

        command: click.Command = typer.main.get_command(app)
    else:
        from ray.scripts.scripts import cli as command
    path = [name]
    while isinstance(command, click.Group):
        assert args and args[0] in command.commands, f"{' '.join(path)}: no sub-command {args[:1]}"
        command, path = command.commands[args[0]], [*path, args[0]]
        args = args[1:]
    command.make_context(" ".join(path), list(args))  # raises click's usage error on a bad option
    return f"parsed by {name}'s click parser: {' '.join(path)}"
