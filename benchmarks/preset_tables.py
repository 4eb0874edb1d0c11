"""Regenerate the metric tables of docs/presets/*.md from real runs.

Each page shows a command (```sh snpsim run examples/X.toml -p A -p B --no-save --json```) followed by a
table whose header is ``| metric | `A` | `B` |``. This script runs every distinct command once (the exact
command line of the page, through the installed ``snpsim``), and rewrites the value cells of the table that
follows it, keeping its rows (the metrics the page chose to show). Values are formatted as the CLI formats
them (:func:`snpsim.units.format_metric`). A command followed by prose instead of a table is printed with its
results, for the page's text to be checked by hand.

    python benchmarks/preset_tables.py            # rewrite the tables in place
    python benchmarks/preset_tables.py --check    # exit 1 if a table differs from a fresh run

The "reading it" paragraphs quote these numbers: after a model change, rerun this script and reread them.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from snpsim.units import format_metric

ROOT = Path(__file__).resolve().parent.parent
PAGES = ROOT / "docs" / "presets"
COMMAND = re.compile(r"^```sh\n(snpsim run [^\n]*--json)\n```\n", re.M)
HEADER = re.compile(r"^\| metric \|(.*)\|\n\|[-:| ]+\|\n", re.M)
ROW = re.compile(r"^\| `([a-z0-9_]+)` \|.*\|\n", re.M)


def presets_of(command: str) -> list[str]:
    words = shlex.split(command)
    return [words[i + 1] for i, w in enumerate(words) if w in ("-p", "--preset")]


def run(command: str, cache: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    if command not in cache:
        print(f"running: {command}", file=sys.stderr)
        done = subprocess.run(shlex.split(command), cwd=ROOT, capture_output=True, text=True)
        if done.stderr:
            print(f"  {done.stderr.strip()} (exit {done.returncode})", file=sys.stderr)
        if not done.stdout.strip():
            raise SystemExit(f"no results from: {command}")
        cache[command] = json.loads(done.stdout)
    return cache[command]


def table(metrics: list[str], presets: list[str], results: dict[str, dict[str, float]]) -> str:
    lines = ["| metric | " + " | ".join(f"`{p}`" for p in presets) + " |"]
    lines.append("|---|" + "---:|" * len(presets))
    for metric in metrics:
        cells = [format_metric(metric, results[p][metric]) for p in presets]
        lines.append(f"| `{metric}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def regenerate(text: str, cache: dict[str, dict[str, dict[str, float]]]) -> str:
    """The page with every table after a command rewritten from that command's run."""
    out: list[str] = []
    pos = 0
    for match in COMMAND.finditer(text):
        command = match.group(1)
        results = run(command, cache)
        rest = text[match.end() :]
        header = HEADER.match(rest.lstrip("\n"))
        if header is None:
            print(f"  (prose follows) {json.dumps(results, indent=None)}", file=sys.stderr)
            continue
        start = match.end() + (len(rest) - len(rest.lstrip("\n")))
        cursor = start + header.end()
        metrics: list[str] = []
        while row := ROW.match(text, cursor):
            metrics.append(row.group(1))
            cursor = row.end()
        presets = presets_of(command)
        out.append(text[pos:start])
        out.append(table(metrics, presets, results))
        pos = cursor
    out.append(text[pos:])
    return "".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report pages whose tables differ")
    parser.add_argument("pages", nargs="*", type=Path, help="pages to process (default: all of docs/presets)")
    args = parser.parse_args()
    cache: dict[str, dict[str, dict[str, float]]] = {}
    stale = []
    for page in args.pages or sorted(PAGES.glob("*.md")):
        text = page.read_text()
        new = regenerate(text, cache)
        if new != text:
            stale.append(page)
            if not args.check:
                page.write_text(new)
    for page in stale:
        print(("stale: " if args.check else "rewrote: ") + str(page.relative_to(ROOT) if page.is_absolute() else page))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
