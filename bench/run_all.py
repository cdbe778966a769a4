"""Run every benchmark in turn (``make bench``); each prints its own ratios and figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES = ["bench_sensor_tick.py", "bench_loader.py"]


def main() -> int:
    here = Path(__file__).resolve().parent
    worst = 0
    for name in BENCHES:
        print(f"== {name}", flush=True)
        worst = max(worst, subprocess.call([sys.executable, str(here / name)]))
    return worst


if __name__ == "__main__":
    sys.exit(main())
