"""The control-database domain: the client, guarded status transitions, schedules, run requests and retry decisions. No Dagster imports."""
