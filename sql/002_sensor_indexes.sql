-- Indexes that keep every sensor tick an index scan at 100k control rows.

-- master_sensor: active rows that are due and not already queued or running.
CREATE INDEX IF NOT EXISTS table_control_due_idx
    ON table_control (next_load_date_time)
    WHERE is_active AND (last_status IS NULL OR last_status NOT IN ('Queued', 'In Progress'));

-- longqueued_monitor / longrunning_monitor.
CREATE INDEX IF NOT EXISTS table_control_queued_idx
    ON table_control (last_status_date_time) WHERE last_status = 'Queued';
CREATE INDEX IF NOT EXISTS table_control_in_progress_idx
    ON table_control (last_load_date_time) WHERE last_status = 'In Progress';

-- failed_monitor: failures still eligible for analysis.
CREATE INDEX IF NOT EXISTS table_control_failed_idx
    ON table_control (last_status_date_time)
    WHERE last_status = 'Failed' AND NOT needs_review AND retry_analysis_requested_at IS NULL;

-- landing_table_monitor.
CREATE INDEX IF NOT EXISTS table_control_unprocessed_landing_idx
    ON table_control (config_id)
    WHERE last_status = 'Succeeded' AND NOT staging_model_processed;

CREATE INDEX IF NOT EXISTS historical_metadata_config_idx
    ON historical_metadata (config_id, metadata_id DESC);
CREATE INDEX IF NOT EXISTS historical_metadata_queued_at_idx
    ON historical_metadata (queued_at DESC);
