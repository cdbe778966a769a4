"""Classic clusters can keep the Pipes context and messages in a Unity Catalog volume (issue 12,
item 6): newer workspaces may have the DBFS root disabled. Chosen by configuration: with
``DATALOADER_DATABRICKS_VOLUME_PATH`` set, an existing or new cluster uses the volume too."""

import pytest
from databricks_standin import CLUSTER, VOLUME, databricks_standin, event_text  # noqa: F401
from helpers import add_control_row, control_row
from test_databricks_e2e import (
    BACKENDS,
    NEW_CLUSTER,
    claim_and_materialize,
    destination_rows,
    standin,  # noqa: F401
)

VOLUME_BACKENDS = {
    "existing_cluster_volume": {"cluster_id": CLUSTER, "volume_path": VOLUME},
    "new_cluster_volume": {"new_cluster_json": NEW_CLUSTER, "volume_path": VOLUME},
}


@pytest.mark.parametrize("backend", sorted(VOLUME_BACKENDS))
def test_a_classic_cluster_load_uses_the_volume_and_never_dbfs(
    backend,
    standin,  # noqa: F811
    control_db,
    source_db,
    source,
    lake_root,
    db,
    instance,
):
    add_control_row(db, source_db, "pg.orders", "orders")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(BACKENDS, backend, VOLUME_BACKENDS[backend])
        result, _ = claim_and_materialize(control_db, instance, "pg.orders", backend)

    assert result.success, event_text(instance, result.run_id)
    assert standin.requests_to("PUT", r"/api/2\.0/fs/files/Volumes/main/dataloader/pipes/.+")
    assert not standin.requests_to("POST", r"/api/2\.0/dbfs/.+")  # DBFS may be disabled
    task = standin.only_run().submit_body["tasks"][0]
    assert ("new_cluster" in task) == (backend == "new_cluster_volume")
    assert control_row(db, "pg.orders")["last_status"] == "Succeeded"
    assert destination_rows(lake_root) == 25
    assert "load read 25 and wrote 25 rows" in event_text(instance, result.run_id)
