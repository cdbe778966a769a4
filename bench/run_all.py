"""Run every benchmark in turn (``make bench``); each prints its own ratios and figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHES = [
    "bench_sensor_tick.py",
    "bench_loader.py",
    "bench_verify.py",
    "bench_column_hash.py",
    "bench_load_script.py",
]
# The differential tests' long profile (tests/loader/arrow/test_differential.py): many more and longer random
# sequences of source changes and loads than `make test` draws.
LONG_DIFFERENTIAL = {"DATALOADER_DIFF_EXAMPLES": "200"}


def main() -> int:
    here = Path(__file__).resolve().parent
    worst = 0
    for name in BENCHES:
        print(f"== {name}", flush=True)
        worst = max(worst, subprocess.call([sys.executable, str(here / name)]))
    print("== tests/loader/arrow/test_differential.py, long profile", flush=True)
    worst = max(
        worst,
        subprocess.call(
            [sys.executable, "-m", "pytest", "-q", "tests/loader/arrow/test_differential.py"],
            cwd=here.parent,
            env={**os.environ, **LONG_DIFFERENTIAL},
        ),
    )
    return worst


if __name__ == "__main__":
    sys.exit(main())
