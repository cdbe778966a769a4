"""What the load script's own process leaves out when it runs the Arrow engine.

pyarrow imports pandas, when it is installed, the first time anything builds an array (its pandas
shim asks whether the value is a pandas object): ``pa.array``, ``pa.scalar``, ``pa.table``, a
query parameter bound for ADBC. The Arrow engine never hands pyarrow or deltalake a pandas object,
yet that one import was about 0.3 s of CPU, a third of a tiny load's script process
(bench/bench_load_script.py). A finder placed first on ``sys.meta_path`` answers ``import pandas``
with ``ModuleNotFoundError``, which pyarrow's shim takes as "pandas is not installed" (a
``sys.modules["pandas"] = None`` would not do: pyarrow's compiled import returns the None).

It is installed only by the load script's ``__main__`` when the engine is ``arrow`` and pandas is
not imported yet: never in a process that imports this module for other reasons (tests, the code
location), and never for the Spark engine (pyspark needs pandas).
"""

from __future__ import annotations

import importlib.abc
import sys


class _WithoutPandas(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "pandas" or fullname.startswith("pandas."):
            raise ModuleNotFoundError(
                "pandas is left out of the Arrow engine's load process "
                "(databricks_scripts/engines/arrow/process.py)",
                name=fullname,
            )


def leave_out_pandas() -> bool:
    """Put the finder first on ``sys.meta_path``; False (nothing done) when pandas is already
    imported or the finder is already there."""
    if "pandas" in sys.modules or any(isinstance(f, _WithoutPandas) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, _WithoutPandas())
    return True
