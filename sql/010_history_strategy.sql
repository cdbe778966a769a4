-- The strategy a load actually applied, and why it ran full, on its history row.
-- historical_metadata.load_strategy is the row's strategy when the attempt is queued; a successful
-- load replaces it with the strategy the loader applied (a first load, a forced reload or a missing
-- watermark make an incremental or merge row load full) and keeps what was asked for in
-- requested_load_strategy. full_load_reason says why it ran full ('first load', 'forced',
-- 'strategy', 'no watermark yet'; NULL when it did not). v_load_history shows load_strategy and the
-- history message says both ("Loaded 25 rows (full load: first load)"). The view itself is not
-- replaced: sql/003 recreates it with its own column list whenever the files are rerun.
-- Rerunnable: ADD COLUMN IF NOT EXISTS.

ALTER TABLE historical_metadata ADD COLUMN IF NOT EXISTS requested_load_strategy text;
ALTER TABLE historical_metadata ADD COLUMN IF NOT EXISTS full_load_reason text;
