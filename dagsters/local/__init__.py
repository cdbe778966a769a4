"""Local-development pieces: the CLI, the embedded PostgreSQL, the demo seed and the migrations runner. Product code never imports this package; only the edge (definitions.py, the CLI) does."""
