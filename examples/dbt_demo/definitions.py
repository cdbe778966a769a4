"""The dbt demo as Dagster assets: a second code location beside DataLoader's (README.md here).

dagster-dbt reads the project's manifest. ``dbt parse`` writes it when it is missing (the first
``dagster dev``, a fresh clone), so nothing generated is committed. Each dbt source names the
asset key DataLoader records for the table it reads (``meta.dagster.asset_key`` in
models/sources.yml), so the model's upstream in the asset graph is the loaded table itself.
"""

import shutil
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource, DbtProject, dbt_assets

PROJECT_DIR = Path(__file__).resolve().parent

# The dbt installed with this Python (the dbt extra), also when its bin/ is not on PATH.
DBT = shutil.which("dbt") or str(Path(sys.executable).with_name("dbt"))

project = DbtProject(project_dir=PROJECT_DIR, profiles_dir=PROJECT_DIR)
dbt_cli = DbtCliResource(project_dir=project, dbt_executable=DBT)
if not project.manifest_path.exists():
    dbt_cli.cli(["parse"]).wait()  # the manifest dagster-dbt builds the assets from


@dbt_assets(manifest=project.manifest_path, project=project)
def dbt_demo_models(context: dg.AssetExecutionContext, dbt: DbtCliResource):
    yield from dbt.cli(["build"], context=context).stream()


defs = dg.Definitions(
    assets=[dbt_demo_models],
    resources={"dbt": dbt_cli},
)
