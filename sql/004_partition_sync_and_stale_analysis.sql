-- Keeping Dagster's control_key partitions in step with table_control, and re-analysing failures
-- whose retry analysis died. Rerunnable: IF NOT EXISTS / OR REPLACE / ON CONFLICT.

-- A counter that moves whenever the set of control_keys may have changed (rows inserted, deleted,
-- truncated, or a control_key edited). master_sensor reads this one row every tick and compares it
-- with the value kept in its cursor, so it only lists 100k keys when something really changed.
-- Status updates do not touch control_key, so the sensors' own writes never move it.
CREATE TABLE IF NOT EXISTS control_keys_state (
    singleton   boolean     PRIMARY KEY DEFAULT true CONSTRAINT control_keys_state_has_one_row
                            CHECK (singleton),
    version     bigint      NOT NULL DEFAULT 1,
    changed_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO control_keys_state (singleton) VALUES (true) ON CONFLICT (singleton) DO NOTHING;

CREATE OR REPLACE FUNCTION dataloader_bump_control_keys_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Statement level: a bulk INSERT of 100k rows moves the counter once.
    UPDATE control_keys_state SET version = version + 1, changed_at = now();
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS table_control_keys_changed ON table_control;
CREATE TRIGGER table_control_keys_changed
    AFTER INSERT OR DELETE OR UPDATE OF control_key ON table_control
    FOR EACH STATEMENT EXECUTE FUNCTION dataloader_bump_control_keys_version();

DROP TRIGGER IF EXISTS table_control_keys_truncated ON table_control;
CREATE TRIGGER table_control_keys_truncated
    AFTER TRUNCATE ON table_control
    FOR EACH STATEMENT EXECUTE FUNCTION dataloader_bump_control_keys_version();

-- failed_monitor also takes back failures whose analysis was requested long ago and never
-- finished (retry_analysis_requested_at older than the timeout), so its query can no longer use
-- the partial index of 002 (which requires retry_analysis_requested_at IS NULL).
CREATE INDEX IF NOT EXISTS table_control_failed_not_reviewed_idx
    ON table_control (last_status_date_time)
    WHERE last_status = 'Failed' AND NOT needs_review;
