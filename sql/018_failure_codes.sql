-- Failure codes (docs/retry-analysis.md, "Codes decide first"; docs/control-database.md).
-- Rerunnable: ADD COLUMN IF NOT EXISTS, constraints added by name once, the trigger is dropped and
-- created again.
--
-- table_control.last_failure_code / historical_metadata.failure_code: the code a foreign error's
-- driver gave, '<family>:<value>' (the wire contract's FAILURE_CODE_FAMILIES,
-- databricks_scripts/contract.py): 'sqlstate:57014', 'mysql:1040', 'sqlserver:1205',
-- 'oracle:ORA-01013', 'databricks:DELTA_CONCURRENT_APPEND', 'http:503'. Retry analysis decides
-- by it before the text (databricks_scripts/failure_codes.py). NULL: no failure, one of
-- DataLoader's own kinds (last_failure_kind), or an error that carried no code. Written with the
-- kind by the one guarded transition whenever a row enters Failed; cleared on Succeeded.
-- No backfill: a row failed before this file has its code parsed from last_message when it is
-- analysed, as every message without a code is.

ALTER TABLE table_control ADD COLUMN IF NOT EXISTS last_failure_code text;
ALTER TABLE historical_metadata ADD COLUMN IF NOT EXISTS failure_code text;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conname = 'last_failure_code_must_be_family_colon_code') THEN
        ALTER TABLE table_control ADD CONSTRAINT last_failure_code_must_be_family_colon_code
            CHECK (last_failure_code ~
                   '^(mysql|sqlserver|oracle|sqlstate|databricks|http):[A-Za-z0-9_.-]{1,100}$');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conname = 'failure_code_must_be_family_colon_code') THEN
        ALTER TABLE historical_metadata ADD CONSTRAINT failure_code_must_be_family_colon_code
            CHECK (failure_code ~
                   '^(mysql|sqlserver|oracle|sqlstate|databricks|http):[A-Za-z0-9_.-]{1,100}$');
    END IF;
END;
$$;

COMMENT ON COLUMN table_control.last_failure_code IS
    'Code the last foreign failure''s driver gave (sqlstate:57014, mysql:1040, ORA-, HTTP, ...); '
    'retry analysis decides by it before the text (docs/retry-analysis.md)';
COMMENT ON COLUMN historical_metadata.failure_code IS
    'Code this attempt''s foreign failure carried (family:code); NULL: none or one of our kinds';

-- The code is the loop's own state, like last_failure_kind: not recorded in control_audit when
-- the code location writes it (014's trigger, with last_failure_code added to its list).
DROP TRIGGER IF EXISTS table_control_audit ON public.table_control;
CREATE TRIGGER table_control_audit
    AFTER INSERT OR UPDATE OR DELETE ON public.table_control
    FOR EACH ROW EXECUTE FUNCTION public.dataloader_audit_change(
        'control_key',
        -- the loop's own state: not recorded when the code location writes it
        'incremental_value', 'next_load_date_time', 'last_status', 'last_status_date_time',
        'last_load_date_time', 'last_dagster_run', 'last_databricks_run', 'last_message',
        'last_metadata_id', 'retry_count', 'retry_analysis_requested_at',
        'staging_model_processed', 'last_failure_kind', 'last_failure_code');

-- Grants are per table (011's dataloader_apply_grants): applied again so the new columns are
-- covered as 011 says.
SELECT public.dataloader_apply_grants();
