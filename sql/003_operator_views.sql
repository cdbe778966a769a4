-- Two views for operators: the current state of every table, and recent history with durations.

CREATE OR REPLACE VIEW v_table_status AS
SELECT
    c.config_id,
    c.control_key,
    c.db_type,
    concat_ws('.', c.source_catalog, c.source_schema_name, c.source_table_name)             AS source,
    concat_ws('.', c.destination_catalog, c.destination_schema_name, c.destination_table_name) AS destination,
    c.load_strategy,
    c.is_active,
    coalesce(c.last_status, 'Ready')                                 AS status,
    c.needs_review,
    c.retry_count,
    c.last_message,
    c.incremental_value                                              AS watermark,
    c.next_load_date_time,
    c.last_status_date_time,
    c.last_load_date_time,
    now() - c.last_status_date_time                                  AS time_in_status,
    coalesce(c.schedule_cron || ' (' || c.schedule_timezone || ')',
             'every ' || c.schedule_interval::text, 'once')          AS schedule,
    c.last_dagster_run,
    c.last_databricks_run,
    c.staging_model_processed
FROM table_control c;

CREATE OR REPLACE VIEW v_load_history AS
SELECT
    h.metadata_id,
    h.config_id,
    h.control_key,
    h.triggered_by,
    h.status,
    h.load_strategy,
    h.queued_at,
    h.started_at,
    h.ended_at,
    h.started_at - h.queued_at                    AS queue_wait,
    h.ended_at - h.started_at                     AS run_duration,
    extract(epoch FROM h.ended_at - h.started_at) AS run_seconds,
    h.rows_read,
    h.rows_written,
    h.watermark_before,
    h.watermark_after,
    h.message,
    h.retry_decision,
    h.retry_decider,
    h.dagster_run_url,
    h.databricks_run_url
FROM historical_metadata h
WHERE h.queued_at > now() - interval '30 days'
ORDER BY h.metadata_id DESC;
