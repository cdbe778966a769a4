"""Local-development pieces: the CLI, the embedded PostgreSQL, the demo seed, the migrations
runner and the local instance's run launcher. Product code never imports this package; only the
edge (definitions.py, the CLI, and the ``dagster.yaml`` the CLI writes) does.

The embedded-PostgreSQL wheel asks platformdirs for its runtime directory when it is imported,
and platformdirs warns (RuntimeDirWarning) when XDG_RUNTIME_DIR is unset or not private, once per
process: noise for a person running ``make dev``, who can do nothing about it. The directory is
used as it is.
"""

import warnings

warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
