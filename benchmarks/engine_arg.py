"""``--engine fast|reference``, the option the benchmark scripts share (``bench_stack``, ``bench_scale``,
``bench_explore``): the scenario field ``engine`` of what they time."""

from __future__ import annotations

import sys

from snpsim.engine import ENGINES


def pop_engine(argv: list[str]) -> str | None:
    """Remove ``--engine NAME`` from ``argv`` (in place) and return NAME, or None if it is not there; a missing or
    unknown NAME ends the script with a one-line message and status 2."""
    if "--engine" not in argv:
        return None
    i = argv.index("--engine")
    name = argv[i + 1] if i + 1 < len(argv) else ""
    if name not in ENGINES:
        print(f"--engine: expected one of {', '.join(ENGINES)}, got {name!r}", file=sys.stderr)
        sys.exit(2)
    del argv[i : i + 2]
    return name
