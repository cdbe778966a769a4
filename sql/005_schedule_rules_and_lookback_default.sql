-- Schedules the database accepts are schedules the scheduler can compute, and a NULL look-back
-- means none. Rerunnable: OR REPLACE / IF NOT EXISTS / ON CONFLICT; constraints added by name once.
--
-- The cron rules are dagsters/control/cron_rules.py written again in PL/pgSQL (the test
-- tests/test_schedule_rules.py runs both over one corpus and requires the same answers):
-- five fields with every value in range, or an @-macro, and at least one slot that exists
-- ('0 0 30 2 *' never fires). Time zones must be names of the zone database (pg_timezone_names),
-- so a POSIX offset string such as 'UTC+3' is refused.

CREATE OR REPLACE FUNCTION dataloader_cron_value(txt text, low int, high int, names text[])
RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    n int;
BEGIN
    IF txt ~ '^[0-9]+$' THEN
        IF length(txt) > 9 THEN
            RETURN NULL;
        END IF;
        n := txt::int;
        RETURN CASE WHEN n BETWEEN low AND high THEN n END;
    END IF;
    n := array_position(names, txt);
    RETURN CASE WHEN n IS NOT NULL THEN low + n - 1 END;
END;
$$;

-- One field: (problem, the values it names). vals is NULL for '*', 'L' and 'N#K'.
CREATE OR REPLACE FUNCTION dataloader_cron_field(
    field text, fname text, low int, high int, names text[], OUT problem text, OUT vals int[])
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    item text;
    m text[];
    step int;
    first_v int;
    last_v int;
    last_t text;
BEGIN
    IF field = '*' OR (fname = 'day of month' AND field = 'l') THEN
        RETURN;
    END IF;
    IF fname = 'day of week' AND position('#' IN field) > 0 THEN
        m := regexp_match(field, '^([a-z0-9]+)#([0-9]+)$');
        IF m IS NULL THEN
            problem := format('day of week %L: N#K must stand alone (e.g. mon#1)', field);
        ELSIF dataloader_cron_value(m[1], low, high, names) IS NULL
              OR length(m[2]) > 1 OR m[2]::int NOT BETWEEN 1 AND 5 THEN
            problem := format('day of week %L: expected a weekday 0-7 and K 1-5 in N#K', field);
        END IF;
        RETURN;
    END IF;
    vals := '{}';
    FOREACH item IN ARRAY string_to_array(field, ',') LOOP
        m := regexp_match(item, '^(\*|[a-z0-9]+(-[a-z0-9]+)?)(/([0-9]+))?$');
        IF m IS NULL THEN
            problem := format('%s %L is not *, N, N-M or one of those with /step', fname, item);
            EXIT;
        END IF;
        -- Any step past the widest field (0-59) names the same single value.
        step := CASE WHEN m[4] IS NULL THEN 1 WHEN length(m[4]) > 3 THEN 1000 ELSE m[4]::int END;
        IF step < 1 THEN
            problem := format('%s %L: the step must be at least 1', fname, item);
            EXIT;
        END IF;
        IF m[1] = '*' THEN
            first_v := low;
            last_v := high;
        ELSE
            last_t := nullif(split_part(m[1], '-', 2), '');
            first_v := dataloader_cron_value(split_part(m[1], '-', 1), low, high, names);
            last_v := CASE WHEN last_t IS NULL THEN first_v
                           ELSE dataloader_cron_value(last_t, low, high, names) END;
            IF first_v IS NULL OR last_v IS NULL THEN
                problem := format('%s %L is outside %s-%s', fname, item, low, high);
                EXIT;
            END IF;
            IF last_t IS NOT NULL AND last_v < first_v THEN
                problem := format('%s %L: a range must go from low to high', fname, item);
                EXIT;
            END IF;
            IF m[4] IS NOT NULL AND last_t IS NULL THEN
                last_v := high;
            END IF;
        END IF;
        vals := vals || ARRAY(SELECT generate_series(first_v, last_v, step));
    END LOOP;
    IF problem IS NOT NULL THEN
        vals := NULL;
    END IF;
END;
$$;

-- NULL when DataLoader can schedule expr; else the sentence that says what is wrong.
CREATE OR REPLACE FUNCTION dataloader_cron_problem(expr text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    shown text := btrim(expr, E' \t\r\n');
    t text := lower(btrim(expr, E' \t\r\n'));
    fields text[];
    r record;
    days int[];
    months int[];
    i int;
    specs CONSTANT text[] := ARRAY['minute', 'hour', 'day of month', 'month', 'day of week'];
    lows CONSTANT int[] := ARRAY[0, 0, 1, 1, 0];
    highs CONSTANT int[] := ARRAY[59, 23, 31, 12, 7];
BEGIN
    IF expr IS NULL OR t = '' THEN
        RETURN 'schedule_cron is empty';
    END IF;
    IF left(t, 1) = '@' THEN
        IF t = ANY (ARRAY['@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight',
                          '@hourly']) THEN
            RETURN NULL;
        END IF;
        RETURN format('unknown cron macro %L', shown);
    END IF;
    fields := regexp_split_to_array(t, '\s+');
    IF cardinality(fields) <> 5 THEN
        RETURN format('cron %L has %s fields; expected five (minute hour day-of-month month '
                      'day-of-week) or an @-macro such as @daily', shown, cardinality(fields));
    END IF;
    FOR i IN 1..5 LOOP
        r := dataloader_cron_field(fields[i], specs[i], lows[i], highs[i],
            CASE i WHEN 4 THEN ARRAY['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug',
                                     'sep', 'oct', 'nov', 'dec']
                   WHEN 5 THEN ARRAY['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat']
                   ELSE ARRAY[]::text[] END);
        IF r.problem IS NOT NULL THEN
            RETURN format('cron %L: %s', shown, r.problem);
        END IF;
        IF i = 3 THEN days := r.vals; END IF;
        IF i = 4 THEN months := r.vals; END IF;
    END LOOP;
    -- croniter requires both day fields for N#K (no day_or): keep it to day of month '*'.
    IF position('#' IN fields[5]) > 0 THEN
        IF fields[3] <> '*' THEN
            RETURN format('cron %L: N#K in day of week needs day of month ''*''', shown);
        END IF;
        IF right(fields[5], 2) = '#5' AND months IS NOT NULL AND months <@ ARRAY[2] THEN
            RETURN format('cron %L never fires reliably: February has no 5th weekday', shown);
        END IF;
    END IF;
    -- With day of week '*' the day of month decides alone: some listed day must exist in some
    -- listed month (February counts 29: leap years come round). Both restricted: either fires.
    IF fields[5] = '*' AND days IS NOT NULL AND months IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM unnest(days) AS d, unnest(months) AS mo
        WHERE d <= CASE WHEN mo = 2 THEN 29 WHEN mo IN (4, 6, 9, 11) THEN 30 ELSE 31 END) THEN
        RETURN format('cron %L never fires: no listed month has the listed day', shown);
    END IF;
    RETURN NULL;
END;
$$;

-- The zone database PostgreSQL knows, copied once so the CHECK is a primary-key lookup (reading
-- pg_timezone_names costs ~20 ms); a name added by a later PostgreSQL release is still found in
-- pg_timezone_names itself.
CREATE TABLE IF NOT EXISTS dataloader_time_zone_names (name text PRIMARY KEY);
INSERT INTO dataloader_time_zone_names (name)
    SELECT name FROM pg_timezone_names ON CONFLICT (name) DO NOTHING;

CREATE OR REPLACE FUNCTION dataloader_is_valid_timezone(tz text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN tz IS NOT NULL AND (
        EXISTS (SELECT 1 FROM dataloader_time_zone_names WHERE name = tz)
        OR EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = tz));
END;
$$;

-- Rows written before these rules that the scheduler cannot compute: paused with the reason and
-- the old value in last_message (nothing is lost), so every later status change of the row still
-- passes the constraints. A person fixes the schedule and sets is_active again.
UPDATE table_control SET
    is_active = false,
    last_message = left(
        'Paused by migration 005: '
        || concat_ws('; ',
            CASE WHEN schedule_cron IS NOT NULL AND dataloader_cron_problem(schedule_cron) IS NOT NULL
                 THEN dataloader_cron_problem(schedule_cron) || ' (schedule_cron cleared)' END,
            CASE WHEN NOT dataloader_is_valid_timezone(schedule_timezone)
                 THEN format('schedule_timezone %L is not a zone name such as Europe/Berlin '
                             '(set to UTC)', schedule_timezone) END)
        || '. Set a valid schedule and is_active = true. Previous message: '
        || coalesce(last_message, '(none)'), 2000),
    schedule_cron = CASE WHEN dataloader_cron_problem(schedule_cron) IS NULL THEN schedule_cron END,
    schedule_timezone = CASE WHEN dataloader_is_valid_timezone(schedule_timezone)
                             THEN schedule_timezone ELSE 'UTC' END
WHERE (schedule_cron IS NOT NULL AND dataloader_cron_problem(schedule_cron) IS NOT NULL)
   OR NOT dataloader_is_valid_timezone(schedule_timezone);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conname = 'schedule_cron_must_have_fields_in_range_and_a_future_slot') THEN
        ALTER TABLE table_control ADD CONSTRAINT schedule_cron_must_have_fields_in_range_and_a_future_slot
            CHECK (schedule_cron IS NULL OR dataloader_cron_problem(schedule_cron) IS NULL);
    END IF;
END;
$$;

-- lookback_window NULL (the README's INSERT template lists the column) means no look-back. A
-- BEFORE trigger runs before the NOT NULL check, so the column stays NOT NULL for readers.
CREATE OR REPLACE FUNCTION dataloader_null_lookback_is_none() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.lookback_window := coalesce(NEW.lookback_window, interval '0');
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS table_control_null_lookback_is_none ON table_control;
CREATE TRIGGER table_control_null_lookback_is_none
    BEFORE INSERT OR UPDATE OF lookback_window ON table_control
    FOR EACH ROW EXECUTE FUNCTION dataloader_null_lookback_is_none();

-- The CHECK names the rule; this trigger, which runs first, says what exactly is wrong with the
-- value a person typed ("cron '61 * * * *': minute '61' is outside 0-59").
CREATE OR REPLACE FUNCTION dataloader_refuse_uncomputable_schedule() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    problem text := CASE WHEN NEW.schedule_cron IS NOT NULL
                         THEN dataloader_cron_problem(NEW.schedule_cron) END;
    rule text := CASE WHEN NOT dataloader_is_valid_cron(NEW.schedule_cron)
                      THEN 'schedule_cron_must_be_five_fields_or_a_macro'
                      ELSE 'schedule_cron_must_have_fields_in_range_and_a_future_slot' END;
BEGIN
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'new row for table_control % violates check constraint "%": %',
                        NEW.control_key, rule, problem
            USING ERRCODE = 'check_violation', CONSTRAINT = rule,
                  HINT = 'Use five fields (minute 0-59, hour 0-23, day 1-31, month 1-12, '
                         'weekday 0-7) that can fire, or @hourly/@daily/...';
    END IF;
    IF NOT dataloader_is_valid_timezone(NEW.schedule_timezone) THEN
        RAISE EXCEPTION 'new row for table_control % violates check constraint "%": '
                        'schedule_timezone % is not a zone name of the zone database',
                        NEW.control_key, 'schedule_timezone_must_be_a_known_time_zone',
                        quote_nullable(NEW.schedule_timezone)
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'schedule_timezone_must_be_a_known_time_zone',
                  HINT = 'Use a name such as UTC, Europe/Berlin or America/New_York '
                         '(SELECT name FROM pg_timezone_names).';
    END IF;
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS table_control_schedule_must_be_computable ON table_control;
CREATE TRIGGER table_control_schedule_must_be_computable
    BEFORE INSERT OR UPDATE OF schedule_cron, schedule_timezone ON table_control
    FOR EACH ROW EXECUTE FUNCTION dataloader_refuse_uncomputable_schedule();
