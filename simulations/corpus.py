"""``python -m simulations.corpus OUT.txt``: a real English text file, offline, for ``data=file``.

The topics of Python's own help (``pydoc_data.topics``: 79 topics of the language reference on
CPython 3.11, about 465,000 characters, 103 distinct) written as ``topic<TAB>line`` lines, so each
topic is one *source* of ``data=file`` (the Dirichlet partition skews clients over topics). It
ships with every CPython, so no download is needed; another Python version gives other text.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def pydoc_corpus() -> str:
    """The help topics as ``topic<TAB>line`` lines (blank lines and tabs dropped)."""
    from pydoc_data.topics import topics

    lines = []
    for name, body in topics.items():
        lines += [f"{name}\t{line.replace(chr(9), ' ')}" for line in body.splitlines() if line.strip()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    args = list(argv if argv is not None else sys.argv[1:])
    if len(args) != 1:
        raise SystemExit("usage: python -m simulations.corpus OUT.txt")
    Path(args[0]).write_text(pydoc_corpus(), encoding="utf-8")
    print(f"wrote {args[0]}: {sys.version.split()[0]}'s pydoc topics")


if __name__ == "__main__":
    main()
