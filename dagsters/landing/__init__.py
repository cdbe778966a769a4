"""Landing tables: reading a loaded table's schema, rendering dbt files, the models git repo."""
