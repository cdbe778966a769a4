-- Failure kinds (docs/control-database.md, "Failure kinds"; docs/retry-analysis.md).
-- Rerunnable: ADD COLUMN IF NOT EXISTS, constraints added by name once, the backfill only
-- touches rows without a kind, the trigger is dropped and created again.
--
-- table_control.last_failure_kind / historical_metadata.failure_kind: what DataLoader itself
-- knows about a failure it raised or settled, one of the wire contract's FAILURE_KINDS
-- (databricks_scripts/contract.py). NULL: no failure, or a foreign error (a driver's, a
-- cluster's, the cloud's), which retry analysis classifies by its text. Failed with a kind is
-- decided by the kind alone (databricks_scripts/failures.py, KIND_RULES); the monitors write
-- their kind through the one guarded transition instead of a message that is matched back.
-- The code location sets it whenever a row enters Failed and clears it on Succeeded.

ALTER TABLE table_control ADD COLUMN IF NOT EXISTS last_failure_kind text;
ALTER TABLE historical_metadata ADD COLUMN IF NOT EXISTS failure_kind text;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conname = 'last_failure_kind_must_be_a_known_kind') THEN
        ALTER TABLE table_control ADD CONSTRAINT last_failure_kind_must_be_a_known_kind
            CHECK (last_failure_kind IN ('bad_config', 'source_auth', 'schema_conflict',
                   'data_mismatch', 'stale_attempt', 'cancelled', 'stuck_queued', 'run_timeout',
                   'orphaned', 'internal'));
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conname = 'failure_kind_must_be_a_known_kind') THEN
        ALTER TABLE historical_metadata ADD CONSTRAINT failure_kind_must_be_a_known_kind
            CHECK (failure_kind IN ('bad_config', 'source_auth', 'schema_conflict',
                   'data_mismatch', 'stale_attempt', 'cancelled', 'stuck_queued', 'run_timeout',
                   'orphaned', 'internal'));
    END IF;
END;
$$;

COMMENT ON COLUMN table_control.last_failure_kind IS
    'Kind of the last failure DataLoader raised or settled (contract FAILURE_KINDS); NULL: none '
    'or a foreign error (docs/control-database.md)';
COMMENT ON COLUMN historical_metadata.failure_kind IS
    'Kind of this attempt''s failure (contract FAILURE_KINDS); NULL: none or a foreign error';

-- Rows failed before this file carry their cause only as text: the monitors' and the terminate's
-- own messages (their fixed openings) get their kind once, so they are decided as before.
UPDATE table_control SET last_failure_kind = CASE
        WHEN last_message LIKE 'Cancelled - Dagster run % was terminated%' THEN 'cancelled'
        WHEN last_message LIKE 'Cancelled - stuck in queue for %' THEN 'stuck_queued'
        WHEN last_message ~ '^Cancelled - exceeded [0-9]+ minute timeout' THEN 'run_timeout'
        WHEN last_message LIKE 'Failed: cannot schedule this row: %' THEN 'bad_config'
    END
 WHERE last_status = 'Failed' AND last_failure_kind IS NULL
   AND (last_message LIKE 'Cancelled - %' OR last_message LIKE 'Failed: cannot schedule this row: %');
UPDATE historical_metadata SET failure_kind = CASE
        WHEN message LIKE 'Cancelled - Dagster run % was terminated%' THEN 'cancelled'
        WHEN message LIKE 'Cancelled - stuck in queue for %' THEN 'stuck_queued'
        WHEN message ~ '^Cancelled - exceeded [0-9]+ minute timeout' THEN 'run_timeout'
    END
 WHERE status = 'Failed' AND failure_kind IS NULL AND message LIKE 'Cancelled - %';

-- The kind is the loop's own state, like last_message: not recorded in control_audit when the
-- code location writes it (011's trigger, with last_failure_kind added to its list).
DROP TRIGGER IF EXISTS table_control_audit ON public.table_control;
CREATE TRIGGER table_control_audit
    AFTER INSERT OR UPDATE OR DELETE ON public.table_control
    FOR EACH ROW EXECUTE FUNCTION public.dataloader_audit_change(
        'control_key',
        -- the loop's own state: not recorded when the code location writes it
        'incremental_value', 'next_load_date_time', 'last_status', 'last_status_date_time',
        'last_load_date_time', 'last_dagster_run', 'last_databricks_run', 'last_message',
        'last_metadata_id', 'retry_count', 'retry_analysis_requested_at',
        'staging_model_processed', 'last_failure_kind');

-- Grants are per table (011's dataloader_apply_grants): the service and operators already update
-- table_control and the service history; applied again so a rerun leaves them as 011 says.
SELECT public.dataloader_apply_grants();
