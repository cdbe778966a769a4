-- Deletes and history (docs/loader.md, "Deletes and history (SCD type 2)"):
--   delete_detection    none | soft | hard: what happens to destination rows whose key is no longer
--                       in the source (soft: __DELETED_AT is set; hard: they are deleted).
--   delete_max_fraction the floor against a source that suddenly returns few keys: a load that
--                       would delete (or mark deleted) more than this fraction of the destination's
--                       live rows fails and deletes nothing. 1 turns the floor off.
--   load_strategy 'scd2' keeps one row per version (__START_AT, __END_AT; NULL = current).
-- Rerunnable: IF NOT EXISTS everywhere; constraints added (or replaced) by name once.

ALTER TABLE table_control
    ADD COLUMN IF NOT EXISTS delete_detection text NOT NULL DEFAULT 'none';
ALTER TABLE table_control
    ADD COLUMN IF NOT EXISTS delete_max_fraction numeric NOT NULL DEFAULT 0.5;

DO $$
DECLARE
    c record;
BEGIN
    -- The strategy CHECK of 001 gains 'scd2' under a name that says so.
    IF EXISTS (SELECT 1 FROM pg_constraint
               WHERE conname = 'load_strategy_must_be_full_incremental_or_merge') THEN
        ALTER TABLE table_control
            DROP CONSTRAINT load_strategy_must_be_full_incremental_or_merge;
    END IF;
    FOR c IN
        SELECT * FROM (VALUES
            ('load_strategy_must_be_full_incremental_merge_or_scd2',
             'CHECK (load_strategy IN (''full'', ''incremental'', ''merge'', ''scd2''))'),
            ('delete_detection_must_be_none_soft_or_hard',
             'CHECK (delete_detection IN (''none'', ''soft'', ''hard''))'),
            ('delete_detection_requires_merge_keys',
             'CHECK (delete_detection = ''none'' OR coalesce(cardinality(merge_keys), 0) > 0)'),
            ('scd2_strategy_requires_merge_keys',
             'CHECK (load_strategy <> ''scd2'' OR coalesce(cardinality(merge_keys), 0) > 0)'),
            ('soft_delete_detection_cannot_use_full_strategy',
             'CHECK (NOT (delete_detection = ''soft'' AND load_strategy = ''full''))'),
            ('delete_max_fraction_must_be_above_0_and_at_most_1',
             'CHECK (delete_max_fraction > 0 AND delete_max_fraction <= 1)')
        ) AS t(name, def)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = c.name) THEN
            EXECUTE format('ALTER TABLE table_control ADD CONSTRAINT %I %s', c.name, c.def);
        END IF;
    END LOOP;
END;
$$;

-- The audit trail records edits of the new settings too (007's trigger, with two more columns).
DROP TRIGGER IF EXISTS table_control_audit ON table_control;
CREATE TRIGGER table_control_audit
    AFTER INSERT OR UPDATE OR DELETE ON table_control
    FOR EACH ROW EXECUTE FUNCTION dataloader_audit_change(
        'control_key', 'control_key', 'source_catalog', 'source_schema_name', 'source_table_name',
        'destination_catalog', 'destination_schema_name', 'destination_table_name', 'db_type',
        'db_config_value', 'db_kv_scope', 'connection_name', 'load_strategy', 'incremental_column',
        'merge_keys', 'lookback_window', 'is_active', 'schedule_cron', 'schedule_timezone',
        'schedule_interval', 'force_full_reload', 'needs_review', 'delete_detection',
        'delete_max_fraction');
