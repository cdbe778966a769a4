"""Policy: the rules and decisions of the code location, apart from the SQL that applies them.

``schedule`` and ``cron_rules`` (when a row is next due), ``freshness`` (how late a table may be),
``run_requests`` (what one load run is asked to do: keys, tags, config), ``retry_analysis`` (retry
or review, from the failure's kind and the retry policy), ``writeback`` (how writing a result back
is retried). None of them holds SQL: ``dagsters/control/`` does, and may use these rules; nothing
here imports Dagster.
"""
