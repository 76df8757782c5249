"""Finished rltrain runs -> a results table in Markdown and CSV.

    python scripts/results_table.py runs/sweeps/2026-11-21_18-42-25            # writes results.md/.csv there
    python scripts/results_table.py runs/ --out tables/

One row per group of runs (grouped by everything that differs in their configs except the seed),
over its seeds: n, mean ± std and the interquartile mean with a 95 % bootstrap confidence interval,
for the final and the best evaluation (normalized score offline when the dataset has reference
scores, else the return). Groups name their failed (unfinished) runs and flag seeds run twice
(counted once); a task x algorithm pair without runs reads "missing". See rltrain/results.py.
"""

from __future__ import annotations

import argparse

from rltrain.results import write_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="folder searched for run directories (recursively)")
    parser.add_argument("--out", help="folder for results.md and results.csv (default: root)")
    args = parser.parse_args()
    markdown, table = write_table(args.root, args.out or args.root)
    print(markdown.read_text())
    print(f"wrote {markdown} and {table}")


if __name__ == "__main__":
    main()
