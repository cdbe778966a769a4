"""The load script's own process under the Arrow engine leaves pandas out (pyarrow would import it
on its first array, 0.3 s of a tiny load), and the load is unchanged by that."""

import subprocess
import sys
import textwrap

import pytest
from test_loader_pipe import dest, execute, make_params, read_rows, run_raw


def _imported(stderr: str) -> set[str]:
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_an_arrow_load_runs_without_importing_pandas(source_db, lake_root, tmp_path):
    execute(
        source_db,
        "CREATE TABLE plain (id int PRIMARY KEY, amount numeric(12,2), note text, "
        "updated_at timestamptz); COMMENT ON COLUMN plain.note IS 'free text'; "
        "INSERT INTO plain SELECT g, g / 100.0, 'n' || g, now() FROM generate_series(1, 50) g",
    )
    params = make_params(source_db, "plain", incremental_column="updated_at", merge_keys=["id"])
    env = {"PYTHONPROFILEIMPORTTIME": "1", "DATALOADER_LAKE_ROOT": str(lake_root)}
    proc, messages = run_raw(params, tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = _imported(proc.stderr)
    assert "pyarrow" in imported and "deltalake" in imported  # the importtime lines were read
    # A refused import still gets a line (a few microseconds); pandas imported has its modules.
    assert not [name for name in imported if name.startswith("pandas.")]
    [meta] = [
        m["params"]["metadata"] for m in messages if m["method"] == "report_asset_materialization"
    ]
    assert meta["rows_written"]["raw_value"] == 50
    columns = {c["name"]: c for c in meta["dagster/column_schema"]["raw_value"]["columns"]}
    assert columns["note"]["description"] == "free text"  # the comment query bound a parameter
    assert len(read_rows(dest(lake_root, params))) == 50


@pytest.mark.parametrize("pandas_first", [False, True])
def test_the_finder_refuses_pandas_only_when_it_was_not_imported_yet(pandas_first):
    code = textwrap.dedent(
        f"""
        import sys
        if {pandas_first}:
            import pandas
        from databricks_scripts.engines.arrow.process import leave_out_pandas
        print(leave_out_pandas(), leave_out_pandas())
        import pyarrow as pa
        assert pa.array([1, None]).null_count == 1
        try:
            import pandas.core.frame
            print("imported")
        except ModuleNotFoundError as exc:
            print("refused", exc.name)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    expected = "True False\nrefused pandas" if not pandas_first else "False False\nimported"
    assert out.stdout.split() == expected.split()
