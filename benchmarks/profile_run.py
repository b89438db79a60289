"""Profile one ``peerkd`` command with cProfile and print where its time went.

    python benchmarks/profile_run.py REPORT.txt run strategy=peer num_clients=1000 rounds=2 ...

The console script ends with ``os._exit`` (no interpreter teardown), which would lose a
``python -m cProfile`` profile; this calls ``simulations.cli.main`` instead, then writes the
top functions by own time and by cumulative time to REPORT.txt (and the raw profile beside it,
REPORT.txt.prof, for ``pstats`` or snakeviz).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys

TOP = 45  # functions listed per ordering


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    report, args = argv[0], argv[1:]
    from simulations.cli import main as peerkd

    profile = cProfile.Profile()
    profile.enable()
    try:
        code = peerkd(args)
    finally:
        profile.disable()
        profile.dump_stats(report + ".prof")
        text = io.StringIO()
        for order in ("tottime", "cumulative"):
            pstats.Stats(profile, stream=text).sort_stats(order).print_stats(TOP)
        with open(report, "w") as f:
            f.write(f"peerkd {' '.join(args)}\n{text.getvalue()}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
