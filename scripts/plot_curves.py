"""Learning curves of rltrain runs: one panel per task, one line per group of runs (grouped by
everything that differs in their configs except the seed), the mean over seeds labelled with its n.
Each run's curve ends at its last evaluation; the mean is solid with a ±1 std band where every seed
has data, dashed where only some have (x: env steps online, gradient updates offline).

    python scripts/plot_curves.py runs/sweeps/2026-11-21_18-42-25               # writes curves.png there
    python scripts/plot_curves.py runs/ --out curves.png

Needs matplotlib (`pip install -e ".[plots]"`). See rltrain/results.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rltrain.extras import MissingExtraError
from rltrain.results import plot_curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="folder searched for run directories (recursively)")
    parser.add_argument("--out", help="PNG file (default: <root>/curves.png)")
    args = parser.parse_args()
    try:
        print(f"wrote {plot_curves(args.root, args.out or Path(args.root) / 'curves.png')}")
    except MissingExtraError as err:
        sys.exit(f"plot_curves: error: {err}")


if __name__ == "__main__":
    main()
