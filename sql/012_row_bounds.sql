-- Every value the database accepts is one the code can use (docs/control-database.md, "Bounds").
-- Rerunnable: OR REPLACE / IF NOT EXISTS; constraints added by name once.
--
-- Before these rules an operator could write values the sensors and the loader cannot compute
-- with: an infinite or year-294276 timestamp (psycopg cannot read it: every tick that touched the
-- row failed), a '100000 years' interval (the next slot overflows), a 1 MB cron (its CHECK took
-- 95 s on every later status change of the row), '1 microsecond' schedules, duplicate merge
-- keys, a 1 MB control_key (larger than an index row). Each rule below is one CHECK whose name
-- says the column and the rule, and each is a handful of comparisons, so it stays cheap on every
-- UPDATE (the claim, every status change).
--
-- The bounds:
--   timestamps of table_control        NULL or 1900-01-01 <= t < 3000-01-01 (UTC): finite, and
--                                      inside what Python's datetime can hold after any schedule
--                                      step
--   schedule_interval                  NULL or 1 minute .. 366 days (1 minute: master_sensor's
--                                      cadence; a yearly load is the longest real schedule)
--   lookback_window                    0 .. 366 days
--   retry_count                        0 .. 1000
--   control_key                        at most 200 characters (an index row is at most ~2.7 kB)
--   names (catalog, schema, table,     at most 255 characters (Unity Catalog's identifier limit)
--   columns, connection, scope)
--   schedule_cron                      at most 100 characters
--   schedule_timezone                  at most 64 characters
--   merge_keys                         1 .. 32 names, none blank, none longer than 255, no name
--                                      twice (compared case-insensitively: Spark and most
--                                      sources do)
--   db_config_value                    at most 4000 characters as text
--   last_message, history message      at most 8000 characters: longer messages written by code
--                                      are cut by a trigger (ending '... [truncated]'), so a
--                                      stack trace never makes a status change fail

-- NULL or inside 1900-01-01 .. 3000-01-01 UTC (so finite).
CREATE OR REPLACE FUNCTION public.dataloader_timestamp_in_bounds(ts timestamptz) RETURNS boolean
LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT ts IS NULL OR (ts >= '1900-01-01 00:00:00+00'::timestamptz
                          AND ts < '3000-01-01 00:00:00+00'::timestamptz);
$$;

-- NULL when merge_keys can be used as a key; else what is wrong with it.
CREATE OR REPLACE FUNCTION public.dataloader_merge_keys_problem(keys text[]) RETURNS text
LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT CASE
        WHEN keys IS NULL THEN NULL
        WHEN cardinality(keys) > 32 THEN format('%s names; at most 32', cardinality(keys))
        WHEN array_ndims(keys) > 1 THEN 'a list of names, not a nested array'
        WHEN EXISTS (SELECT 1 FROM unnest(keys) AS k WHERE k IS NULL OR btrim(k) = '')
            THEN 'a name is NULL or blank'
        WHEN EXISTS (SELECT 1 FROM unnest(keys) AS k WHERE length(k) > 255)
            THEN 'a name is longer than 255 characters'
        ELSE (SELECT format('%L is named %s times', min(k), count(*))
              FROM unnest(keys) AS k GROUP BY lower(btrim(k)) HAVING count(*) > 1
              ORDER BY min(k) LIMIT 1)
    END;
$$;

-- The first bound a control row's values break, naming the column, the value and the rule; NULL
-- when the sensors and the loader can compute with every value. The same rules as the CHECKs
-- below: the sensors call it to fail (never crash on) a row written where these CHECKs were not
-- in force, and this file uses it to pause rows written before it. Only comparisons: it never
-- raises, whatever the values.
CREATE OR REPLACE FUNCTION public.dataloader_control_row_problem(
    control_key text,
    next_load_date_time timestamptz,
    last_status_date_time timestamptz,
    last_load_date_time timestamptz,
    retry_analysis_requested_at timestamptz,
    created_at timestamptz,
    updated_at timestamptz,
    schedule_interval interval,
    lookback_window interval,
    schedule_cron text,
    retry_count int,
    merge_keys text[])
RETURNS text LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT CASE
        WHEN NOT public.dataloader_timestamp_in_bounds(next_load_date_time)
            THEN format('next_load_date_time = %L is outside 1900-01-01 .. 3000-01-01 (rule '
                        'next_load_date_time_must_be_finite_1900_to_3000)',
                        next_load_date_time)
        WHEN NOT public.dataloader_timestamp_in_bounds(last_status_date_time)
            THEN format('last_status_date_time = %L is outside 1900-01-01 .. 3000-01-01 (rule '
                        'last_status_date_time_must_be_finite_1900_to_3000)',
                        last_status_date_time)
        WHEN NOT public.dataloader_timestamp_in_bounds(last_load_date_time)
            THEN format('last_load_date_time = %L is outside 1900-01-01 .. 3000-01-01 (rule '
                        'last_load_date_time_must_be_finite_1900_to_3000)',
                        last_load_date_time)
        WHEN NOT public.dataloader_timestamp_in_bounds(retry_analysis_requested_at)
            THEN format('retry_analysis_requested_at = %L is outside 1900-01-01 .. 3000-01-01 '
                        '(rule retry_analysis_requested_at_must_be_finite_1900_to_3000)',
                        retry_analysis_requested_at)
        WHEN NOT public.dataloader_timestamp_in_bounds(created_at)
            THEN format('created_at = %L is outside 1900-01-01 .. 3000-01-01 (rule '
                        'created_at_must_be_finite_1900_to_3000)', created_at)
        WHEN NOT public.dataloader_timestamp_in_bounds(updated_at)
            THEN format('updated_at = %L is outside 1900-01-01 .. 3000-01-01 (rule '
                        'updated_at_must_be_finite_1900_to_3000)', updated_at)
        WHEN NOT (schedule_interval IS NULL
                  OR schedule_interval BETWEEN interval '1 minute' AND interval '366 days')
            THEN format('schedule_interval = %L is outside 1 minute .. 366 days (rule '
                        'schedule_interval_must_stay_within_1_minute_and_366_days)',
                        schedule_interval)
        WHEN NOT (lookback_window IS NULL
                  OR lookback_window BETWEEN interval '0' AND interval '366 days')
            THEN format('lookback_window = %L is outside 0 .. 366 days (rule '
                        'lookback_window_must_stay_within_0_and_366_days)', lookback_window)
        WHEN length(schedule_cron) > 100
            THEN format('schedule_cron is %s characters long (rule '
                        'schedule_cron_must_be_at_most_100_characters)', length(schedule_cron))
        WHEN NOT (retry_count BETWEEN 0 AND 1000)
            THEN format('retry_count = %s is outside 0 .. 1000 (rule '
                        'retry_count_must_stay_within_0_and_1000)', retry_count)
        WHEN length(control_key) > 200
            THEN format('control_key is %s characters long (rule '
                        'control_key_must_be_at_most_200_characters)', length(control_key))
        WHEN public.dataloader_merge_keys_problem(merge_keys) IS NOT NULL
            THEN format('merge_keys = %L: %s (rule merge_keys_must_be_distinct_names)',
                        left(merge_keys::text, 300), public.dataloader_merge_keys_problem(merge_keys))
    END;
$$;

-- NULL when every name is at most 255 characters; else the first column that is longer.
CREATE OR REPLACE FUNCTION public.dataloader_long_name(
    source_catalog text, source_schema_name text, source_table_name text,
    destination_catalog text, destination_schema_name text, destination_table_name text,
    incremental_column text, jdbc_partition_column text, connection_name text, db_kv_scope text)
RETURNS text LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT CASE
        WHEN length(source_catalog) > 255 THEN 'source_catalog'
        WHEN length(source_schema_name) > 255 THEN 'source_schema_name'
        WHEN length(source_table_name) > 255 THEN 'source_table_name'
        WHEN length(destination_catalog) > 255 THEN 'destination_catalog'
        WHEN length(destination_schema_name) > 255 THEN 'destination_schema_name'
        WHEN length(destination_table_name) > 255 THEN 'destination_table_name'
        WHEN length(incremental_column) > 255 THEN 'incremental_column'
        WHEN length(jdbc_partition_column) > 255 THEN 'jdbc_partition_column'
        WHEN length(connection_name) > 255 THEN 'connection_name'
        WHEN length(db_kv_scope) > 255 THEN 'db_kv_scope'
    END;
$$;

-- merge_keys without blanks and repeats (first spelling kept, order kept), at most 32 names.
CREATE OR REPLACE FUNCTION public.dataloader_distinct_merge_keys(keys text[]) RETURNS text[]
LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT array_agg(k ORDER BY pos) FROM (
        SELECT k, pos FROM (
            SELECT DISTINCT ON (lower(left(btrim(k), 255))) left(btrim(k), 255) AS k, pos
            FROM unnest(keys) WITH ORDINALITY AS u(k, pos)
            WHERE k IS NOT NULL AND btrim(k) <> ''
            ORDER BY lower(left(btrim(k), 255)), pos) AS firsts
        ORDER BY pos LIMIT 32) AS kept;
$$;

-- ---- rows written before these rules --------------------------------------------------------
-- Paused with the reason and the old value in last_message (like sql/005), the value brought
-- inside its bound, so every later status change of the row passes the constraints. A person
-- fixes the value and sets is_active again.
UPDATE table_control SET
    is_active = false,
    last_message = left(
        'Paused by migration 012: '
        || concat_ws('; ',
            public.dataloader_control_row_problem(
                control_key, next_load_date_time, last_status_date_time, last_load_date_time,
                retry_analysis_requested_at, created_at, updated_at, schedule_interval,
                lookback_window, schedule_cron, retry_count, merge_keys),
            CASE WHEN public.dataloader_long_name(
                    source_catalog, source_schema_name, source_table_name, destination_catalog,
                    destination_schema_name, destination_table_name, incremental_column,
                    jdbc_partition_column, connection_name, db_kv_scope) IS NOT NULL
                 THEN public.dataloader_long_name(
                    source_catalog, source_schema_name, source_table_name, destination_catalog,
                    destination_schema_name, destination_table_name, incremental_column,
                    jdbc_partition_column, connection_name, db_kv_scope)
                    || ' is longer than 255 characters (cut)' END,
            CASE WHEN length(db_config_value::text) > 4000
                 THEN 'db_config_value is longer than 4000 characters (set to {})' END)
        || '. Fix the value and set is_active = true. Previous message: '
        || coalesce(last_message, '(none)'), 7900),
    control_key = CASE WHEN length(control_key) > 200
                       THEN left(control_key, 180) || '~' || config_id ELSE control_key END,
    next_load_date_time = CASE WHEN public.dataloader_timestamp_in_bounds(next_load_date_time)
                               THEN next_load_date_time END,
    last_status_date_time = CASE WHEN public.dataloader_timestamp_in_bounds(last_status_date_time)
                                 THEN last_status_date_time ELSE now() END,
    last_load_date_time = CASE WHEN public.dataloader_timestamp_in_bounds(last_load_date_time)
                               THEN last_load_date_time END,
    retry_analysis_requested_at = CASE
        WHEN public.dataloader_timestamp_in_bounds(retry_analysis_requested_at)
        THEN retry_analysis_requested_at END,
    created_at = CASE WHEN public.dataloader_timestamp_in_bounds(created_at) THEN created_at
                      ELSE now() END,
    schedule_interval = CASE WHEN schedule_interval
                                  BETWEEN interval '1 minute' AND interval '366 days'
                             THEN schedule_interval END,
    lookback_window = least(lookback_window, interval '366 days'),
    schedule_cron = CASE WHEN length(schedule_cron) <= 100 THEN schedule_cron END,
    retry_count = least(greatest(retry_count, 0), 1000),
    merge_keys = CASE WHEN public.dataloader_merge_keys_problem(merge_keys) IS NULL THEN merge_keys
                      ELSE public.dataloader_distinct_merge_keys(merge_keys) END,
    source_catalog = left(source_catalog, 255),
    source_schema_name = left(source_schema_name, 255),
    source_table_name = left(source_table_name, 255),
    destination_catalog = left(destination_catalog, 255),
    destination_schema_name = left(destination_schema_name, 255),
    destination_table_name = left(destination_table_name, 255),
    incremental_column = left(incremental_column, 255),
    jdbc_partition_column = left(jdbc_partition_column, 255),
    connection_name = left(connection_name, 255),
    db_kv_scope = left(db_kv_scope, 255),
    db_config_value = CASE WHEN length(db_config_value::text) > 4000 THEN '{}'::jsonb
                           ELSE db_config_value END
WHERE public.dataloader_control_row_problem(
          control_key, next_load_date_time, last_status_date_time, last_load_date_time,
          retry_analysis_requested_at, created_at, updated_at, schedule_interval,
          lookback_window, schedule_cron, retry_count, merge_keys) IS NOT NULL
   OR public.dataloader_long_name(
          source_catalog, source_schema_name, source_table_name, destination_catalog,
          destination_schema_name, destination_table_name, incremental_column,
          jdbc_partition_column, connection_name, db_kv_scope) IS NOT NULL
   OR length(db_config_value::text) > 4000;

-- Messages: cut, never refused (a status change must not fail on the length of its message).
CREATE OR REPLACE FUNCTION public.dataloader_cut_message(msg text) RETURNS text
LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT CASE WHEN length(msg) > 8000 THEN left(msg, 7984) || ' ... [truncated]' ELSE msg END;
$$;

UPDATE table_control SET last_message = public.dataloader_cut_message(last_message)
WHERE length(last_message) > 8000;
UPDATE historical_metadata SET message = public.dataloader_cut_message(message)
WHERE length(message) > 8000;

CREATE OR REPLACE FUNCTION public.dataloader_cut_control_message() RETURNS trigger
LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    NEW.last_message := public.dataloader_cut_message(NEW.last_message);
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS table_control_cut_message ON table_control;
CREATE TRIGGER table_control_cut_message
    BEFORE INSERT OR UPDATE OF last_message ON table_control
    FOR EACH ROW EXECUTE FUNCTION dataloader_cut_control_message();

CREATE OR REPLACE FUNCTION public.dataloader_cut_history_message() RETURNS trigger
LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    NEW.message := public.dataloader_cut_message(NEW.message);
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS historical_metadata_cut_message ON historical_metadata;
CREATE TRIGGER historical_metadata_cut_message
    BEFORE INSERT OR UPDATE OF message ON historical_metadata
    FOR EACH ROW EXECUTE FUNCTION dataloader_cut_history_message();

-- ---- the CHECKs ------------------------------------------------------------------------------
DO $$
DECLARE
    c record;
    col text;
BEGIN
    FOREACH col IN ARRAY ARRAY['next_load_date_time', 'last_status_date_time',
                               'last_load_date_time', 'retry_analysis_requested_at',
                               'created_at', 'updated_at'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_constraint
                       WHERE conname = col || '_must_be_finite_1900_to_3000') THEN
            EXECUTE format('ALTER TABLE table_control ADD CONSTRAINT %I CHECK '
                           '(public.dataloader_timestamp_in_bounds(%I))',
                           col || '_must_be_finite_1900_to_3000', col);
        END IF;
    END LOOP;
    FOREACH col IN ARRAY ARRAY['source_catalog', 'source_schema_name', 'source_table_name',
                               'destination_catalog', 'destination_schema_name',
                               'destination_table_name', 'incremental_column',
                               'jdbc_partition_column', 'connection_name', 'db_kv_scope'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_constraint
                       WHERE conname = col || '_must_be_at_most_255_characters') THEN
            EXECUTE format('ALTER TABLE table_control ADD CONSTRAINT %I CHECK '
                           '(length(%I) <= 255)', col || '_must_be_at_most_255_characters', col);
        END IF;
    END LOOP;
    FOR c IN
        SELECT * FROM (VALUES
            ('table_control', 'schedule_interval_must_stay_within_1_minute_and_366_days',
             'CHECK (schedule_interval IS NULL OR schedule_interval'
             ' BETWEEN interval ''1 minute'' AND interval ''366 days'')'),
            ('table_control', 'lookback_window_must_stay_within_0_and_366_days',
             'CHECK (lookback_window BETWEEN interval ''0'' AND interval ''366 days'')'),
            ('table_control', 'retry_count_must_stay_within_0_and_1000',
             'CHECK (retry_count BETWEEN 0 AND 1000)'),
            ('table_control', 'control_key_must_be_at_most_200_characters',
             'CHECK (length(control_key) <= 200)'),
            ('table_control', 'schedule_cron_must_be_at_most_100_characters',
             'CHECK (length(schedule_cron) <= 100)'),
            ('table_control', 'schedule_timezone_must_be_at_most_64_characters',
             'CHECK (length(schedule_timezone) <= 64)'),
            ('table_control', 'merge_keys_must_be_distinct_names',
             'CHECK (public.dataloader_merge_keys_problem(merge_keys) IS NULL)'),
            ('table_control', 'db_config_value_must_be_at_most_4000_characters',
             'CHECK (length(db_config_value::text) <= 4000)'),
            ('table_control', 'last_message_must_be_at_most_8000_characters',
             'CHECK (length(last_message) <= 8000)'),
            ('historical_metadata', 'history_message_must_be_at_most_8000_characters',
             'CHECK (length(message) <= 8000)')
        ) AS t(tbl, name, def)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = c.name) THEN
            EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', c.tbl, c.name, c.def);
        END IF;
    END LOOP;
END;
$$;

-- sql/005's trigger computed the cron rules of a value of any length (a 1 MB cron: 202 s) before
-- any CHECK could refuse it; the length is now refused first, by the constraint's own name.
CREATE OR REPLACE FUNCTION public.dataloader_refuse_uncomputable_schedule() RETURNS trigger
LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    problem text;
    rule text;
BEGIN
    IF length(NEW.schedule_cron) > 100 THEN
        RAISE EXCEPTION 'new row for table_control % violates check constraint "%": '
                        'schedule_cron is % characters long; at most 100',
                        left(NEW.control_key, 200), 'schedule_cron_must_be_at_most_100_characters',
                        length(NEW.schedule_cron)
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'schedule_cron_must_be_at_most_100_characters',
                  HINT = 'Use five fields (minute 0-59, hour 0-23, day 1-31, month 1-12, '
                         'weekday 0-7) that can fire, or @hourly/@daily/...';
    END IF;
    IF length(NEW.schedule_timezone) > 64 THEN
        RAISE EXCEPTION 'new row for table_control % violates check constraint "%": '
                        'schedule_timezone is % characters long; at most 64',
                        left(NEW.control_key, 200),
                        'schedule_timezone_must_be_at_most_64_characters',
                        length(NEW.schedule_timezone)
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'schedule_timezone_must_be_at_most_64_characters';
    END IF;
    problem := CASE WHEN NEW.schedule_cron IS NOT NULL
                    THEN public.dataloader_cron_problem(NEW.schedule_cron) END;
    rule := CASE WHEN NOT public.dataloader_is_valid_cron(NEW.schedule_cron)
                 THEN 'schedule_cron_must_be_five_fields_or_a_macro'
                 ELSE 'schedule_cron_must_have_fields_in_range_and_a_future_slot' END;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'new row for table_control % violates check constraint "%": %',
                        left(NEW.control_key, 200), rule, problem
            USING ERRCODE = 'check_violation', CONSTRAINT = rule,
                  HINT = 'Use five fields (minute 0-59, hour 0-23, day 1-31, month 1-12, '
                         'weekday 0-7) that can fire, or @hourly/@daily/...';
    END IF;
    IF NOT public.dataloader_is_valid_timezone(NEW.schedule_timezone) THEN
        RAISE EXCEPTION 'new row for table_control % violates check constraint "%": '
                        'schedule_timezone % is not a zone name of the zone database',
                        left(NEW.control_key, 200), 'schedule_timezone_must_be_a_known_time_zone',
                        quote_nullable(NEW.schedule_timezone)
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'schedule_timezone_must_be_a_known_time_zone',
                  HINT = 'Use a name such as UTC, Europe/Berlin or America/New_York '
                         '(SELECT name FROM pg_timezone_names).';
    END IF;
    RETURN NEW;
END;
$$;

-- The sensors' first statement each tick fails rows whose values they cannot compute with
-- (dagsters/control/uncomputable.py). Where the CHECKs above are in force this index is empty,
-- so that statement is one look at an empty index.
CREATE INDEX IF NOT EXISTS table_control_uncomputable_idx ON table_control (config_id)
    WHERE public.dataloader_control_row_problem(
        control_key, next_load_date_time, last_status_date_time, last_load_date_time,
        retry_analysis_requested_at, created_at, updated_at, schedule_interval,
        lookback_window, schedule_cron, retry_count, merge_keys) IS NOT NULL;
