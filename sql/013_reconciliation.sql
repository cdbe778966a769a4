-- The reconciliation check after each load (docs/loader.md, "Reconciliation").
-- Rerunnable: ADD COLUMN IF NOT EXISTS; the constraint added by name once.
--
-- verify_depth: how deep the check after each load goes.
--   none   - no check;
--   counts - (default) the source's rows in the load's scope, read in the load's own snapshot,
--            against the destination's rows / open versions / distinct keys in that scope;
--   keys   - also the key (and cursor) sets of both sides, naming the first differing keys.
-- The deep verification job (dataloader__deep_verify_job) compares row hashes on demand.

ALTER TABLE table_control ADD COLUMN IF NOT EXISTS verify_depth text NOT NULL DEFAULT 'counts';

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conname = 'verify_depth_must_be_none_counts_or_keys') THEN
        ALTER TABLE table_control ADD CONSTRAINT verify_depth_must_be_none_counts_or_keys
            CHECK (verify_depth IN ('none', 'counts', 'keys'));
    END IF;
END;
$$;

COMMENT ON COLUMN table_control.verify_depth IS
    'Reconciliation check after each load: none | counts (default) | keys (docs/loader.md)';
