-- The strategy a load actually applied, and why it ran full, on its history row.
-- historical_metadata.load_strategy is the row's strategy when the attempt was queued (what was
-- asked for); applied_strategy is what the loader did: a first load, a forced reload or a missing
-- watermark make an incremental or merge row load full. full_load_reason says which
-- ('first load', 'forced', 'strategy', 'no watermark yet'); NULL when the load was not full.
-- Rerunnable: ADD COLUMN IF NOT EXISTS, CREATE OR REPLACE VIEW (new columns at the end, so the
-- view keeps its grants and its earlier columns' order).

ALTER TABLE historical_metadata ADD COLUMN IF NOT EXISTS applied_strategy text;
ALTER TABLE historical_metadata ADD COLUMN IF NOT EXISTS full_load_reason text;

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
    h.databricks_run_url,
    h.applied_strategy,
    h.full_load_reason
FROM historical_metadata h
WHERE h.queued_at > now() - interval '30 days'
ORDER BY h.metadata_id DESC;

