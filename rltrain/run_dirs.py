"""Run directories that no two processes share.

``hydra.run.dir`` ends with a timestamp to the second; two runs started in the same second would
write into one directory. :func:`unique_run_dir` (the ``rltrain_run_dir`` resolver of
``configs/config.yaml``) creates the directory itself with ``mkdir``, which is atomic: the first
process gets ``<timestamp>``, the next ``<timestamp>-1``, and so on.
"""

from __future__ import annotations

import sys
from pathlib import Path

# requested path -> the directory this process created for it (Hydra may resolve hydra.run.dir
# more than once; every resolution must give the same directory)
CREATED: dict[str, str] = {}


def unique_run_dir(base: str) -> str:
    """``base``, or ``base-1``, ``base-2``, ...: the first one this process creates itself."""
    if base not in CREATED:
        try:
            Path(base).parent.mkdir(parents=True, exist_ok=True)
            n = 0
            while True:
                candidate = base if n == 0 else f"{base}-{n}"
                try:
                    Path(candidate).mkdir()
                    break
                except FileExistsError:
                    n += 1
        except OSError as err:
            # Raised inside Hydra's config resolution, an exception would be reported with Hydra's
            # traceback; SystemExit passes through it.
            print(f"rltrain: error: cannot create the run directory {base}: {err.strerror}. Pass a writable "
                  "run_root=<dir>", file=sys.stderr, flush=True)
            sys.exit(2)
        CREATED[base] = candidate
    return CREATED[base]


def created_by_this_process(path: Path) -> bool:
    return Path(path).resolve() in {Path(d).resolve() for d in CREATED.values()}
