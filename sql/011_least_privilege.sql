-- Least privilege that holds (issue 22): every function of ours is safe to call, the audit trail
-- covers every column, secret names stay with connection admins, and no secret-shaped key can
-- sit in db_config_value. Rerunnable: OR REPLACE / IF NOT EXISTS; constraints added by name once.
--
-- Why: a function without a pinned search_path resolves its unqualified table names in the
-- caller's pg_temp first (PostgreSQL searches pg_temp before the path unless it is named). A
-- login in dataloader_operator made a temporary control_keys_state with a trigger on it; the
-- SECURITY DEFINER counter bump of 004/007 then ran that trigger as the owner (superuser: ALTER
-- ROLE ... SUPERUSER; a CREATEROLE owner: empty the audit, grant itself the connections). A
-- temporary dataloader_time_zone_names let any zone through the schedule CHECK.
--
-- The rule from here on: every function in this schema says SET search_path = pg_catalog,
-- public, pg_temp (pg_temp last, so it is searched last for tables and never for functions or
-- operators) and names our tables and functions with their schema. tests/test_least_privilege.py
-- reads pg_proc and fails on any function of ours that does not.

-- ---- functions behind CHECKs and triggers, schema-qualified, search_path pinned ----------------

CREATE OR REPLACE FUNCTION public.dataloader_is_valid_cron(expr text) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT expr OPERATOR(pg_catalog.~*) ('^\s*(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|'
                    || '(' || f || '\s+){4}' || f || ')\s*$')
    FROM (SELECT '([0-9*?,/#lw-]|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec'
                 || '|mon|tue|wed|thu|fri|sat|sun)+' AS f) AS field;
$$;

CREATE OR REPLACE FUNCTION public.dataloader_is_valid_timezone(tz text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    RETURN tz IS NOT NULL AND (
        EXISTS (SELECT 1 FROM public.dataloader_time_zone_names WHERE name = tz)
        OR EXISTS (SELECT 1 FROM pg_catalog.pg_timezone_names WHERE name = tz));
END;
$$;

CREATE OR REPLACE FUNCTION public.dataloader_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    NEW.updated_at := pg_catalog.now();
    RETURN NEW;
END;
$$;

-- SECURITY DEFINER: operators insert rows and the counter moves on their behalf.
CREATE OR REPLACE FUNCTION public.dataloader_bump_control_keys_version() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    -- Statement level: a bulk INSERT of 100k rows moves the counter once.
    UPDATE public.control_keys_state SET version = version + 1, changed_at = pg_catalog.now();
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION public.dataloader_null_lookback_is_none() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    NEW.lookback_window := coalesce(NEW.lookback_window, pg_catalog.make_interval());
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION public.dataloader_cron_value(txt text, low int, high int, names text[])
RETURNS int LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, public, pg_temp AS $$
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
CREATE OR REPLACE FUNCTION public.dataloader_cron_field(
    field text, fname text, low int, high int, names text[], OUT problem text, OUT vals int[])
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, public, pg_temp AS $$
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
        ELSIF public.dataloader_cron_value(m[1], low, high, names) IS NULL
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
            first_v := public.dataloader_cron_value(split_part(m[1], '-', 1), low, high, names);
            last_v := CASE WHEN last_t IS NULL THEN first_v
                           ELSE public.dataloader_cron_value(last_t, low, high, names) END;
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
CREATE OR REPLACE FUNCTION public.dataloader_cron_problem(expr text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, public, pg_temp AS $$
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
        r := public.dataloader_cron_field(fields[i], specs[i], lows[i], highs[i],
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


CREATE OR REPLACE FUNCTION public.dataloader_refuse_uncomputable_schedule() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    problem text := CASE WHEN NEW.schedule_cron IS NOT NULL
                         THEN public.dataloader_cron_problem(NEW.schedule_cron) END;
    rule text := CASE WHEN NOT public.dataloader_is_valid_cron(NEW.schedule_cron)
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
    IF NOT public.dataloader_is_valid_timezone(NEW.schedule_timezone) THEN
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

-- ---- secret-shaped keys ------------------------------------------------------------------------
-- A key that names a password, secret or token, in any case and at any depth, except the one
-- top-level key 'password_secret' (the *name* of a secret in a scope, never its value).
CREATE OR REPLACE FUNCTION public.dataloader_is_secret_shaped_key(k text, top_level boolean)
RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT NOT (top_level AND k = 'password_secret')
       AND pg_catalog.lower(k) OPERATOR(pg_catalog.~)
           '(passw|passphrase|pwd|secret|token|api_?key|credential|private_?key)';
$$;

CREATE OR REPLACE FUNCTION public.dataloader_secret_shaped_keys(cfg jsonb, top_level boolean DEFAULT true)
RETURNS text[]
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    found text[] := '{}';
    e record;
BEGIN
    IF pg_catalog.jsonb_typeof(cfg) = 'object' THEN
        FOR e IN SELECT j.key, j.value FROM pg_catalog.jsonb_each(cfg) AS j LOOP
            IF public.dataloader_is_secret_shaped_key(e.key, top_level) THEN
                found := pg_catalog.array_append(found, e.key);
            END IF;
            found := pg_catalog.array_cat(found, public.dataloader_secret_shaped_keys(e.value, false));
        END LOOP;
    ELSIF pg_catalog.jsonb_typeof(cfg) = 'array' THEN
        FOR e IN SELECT j.value FROM pg_catalog.jsonb_array_elements(cfg) AS j LOOP
            found := pg_catalog.array_cat(found, public.dataloader_secret_shaped_keys(e.value, false));
        END LOOP;
    END IF;
    RETURN found;
END;
$$;

-- cfg without those keys (the audit trail keeps configurations, never a copy of a password).
CREATE OR REPLACE FUNCTION public.dataloader_without_secret_shaped_keys(cfg jsonb, top_level boolean DEFAULT true)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF pg_catalog.jsonb_typeof(cfg) = 'object' THEN
        RETURN (SELECT coalesce(pg_catalog.jsonb_object_agg(
                        j.key, public.dataloader_without_secret_shaped_keys(j.value, false)),
                        '{}'::jsonb)
                FROM pg_catalog.jsonb_each(cfg) AS j
                WHERE NOT public.dataloader_is_secret_shaped_key(j.key, top_level));
    ELSIF pg_catalog.jsonb_typeof(cfg) = 'array' THEN
        RETURN (SELECT coalesce(pg_catalog.jsonb_agg(
                        public.dataloader_without_secret_shaped_keys(j.value, false)), '[]'::jsonb)
                FROM pg_catalog.jsonb_array_elements(cfg) AS j);
    END IF;
    RETURN cfg;
END;
$$;

-- Rows that already hold such a key: the key is removed (it is a secret in the wrong place) and
-- the row is paused with the keys' names in last_message, so every later update of it passes.
UPDATE public.table_control SET
    is_active = false,
    last_message = pg_catalog.left(
        'Paused by migration 011: db_config_value held secret-shaped keys '
        || pg_catalog.array_to_string(public.dataloader_secret_shaped_keys(db_config_value), ', ')
        || ' (removed: put the password in a secret scope and name it with a source_connection).'
        || ' Previous message: ' || coalesce(last_message, '(none)'), 2000),
    db_config_value = public.dataloader_without_secret_shaped_keys(db_config_value)
WHERE public.dataloader_secret_shaped_keys(db_config_value) <> '{}'::text[];

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                   WHERE conname = 'db_config_value_must_not_name_a_password_secret_or_token_key') THEN
        ALTER TABLE public.table_control
            ADD CONSTRAINT db_config_value_must_not_name_a_password_secret_or_token_key
            CHECK (public.dataloader_secret_shaped_keys(db_config_value) = '{}'::text[]);
    END IF;
END;
$$;

-- ---- audit: every column -----------------------------------------------------------------------
-- Is this session the code location (a member of dataloader_service, the tables' owner, or a
-- superuser)? Its status, watermark and run-link updates are the loop itself, not edits.
CREATE OR REPLACE FUNCTION public.dataloader_session_is_service() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = session_user), false)
        OR pg_catalog.pg_has_role(session_user,
               (SELECT c.relowner FROM pg_catalog.pg_class c
                WHERE c.oid = 'public.table_control'::pg_catalog.regclass), 'MEMBER')
        OR (EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = 'dataloader_service')
            AND pg_catalog.pg_has_role(session_user, 'dataloader_service', 'MEMBER'));
$$;

-- TG_ARGV[0]: the key column. Every column is audited (updated_at, which the touch trigger sets,
-- aside), so a column added later is audited without anyone remembering to list it. TG_ARGV[1:]:
-- the state columns whose changes are not recorded when the code location makes them
-- (dataloader_session_is_service); an operator's write to them is recorded like any other edit.
-- changed_by is session_user (the login, also after SET ROLE); acting_role is the SET ROLE role.
CREATE OR REPLACE FUNCTION public.dataloader_audit_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    old_j  jsonb := CASE WHEN TG_OP <> 'INSERT' THEN pg_catalog.to_jsonb(OLD) END;
    new_j  jsonb := CASE WHEN TG_OP <> 'DELETE' THEN pg_catalog.to_jsonb(NEW) END;
    skip   text[] := '{}';
    k      text;
    diff_o jsonb := '{}'::jsonb;
    diff_n jsonb := '{}'::jsonb;
BEGIN
    IF old_j ? 'db_config_value' THEN
        old_j := pg_catalog.jsonb_set(old_j, '{db_config_value}',
                     public.dataloader_without_secret_shaped_keys(old_j -> 'db_config_value'));
    END IF;
    IF new_j ? 'db_config_value' THEN
        new_j := pg_catalog.jsonb_set(new_j, '{db_config_value}',
                     public.dataloader_without_secret_shaped_keys(new_j -> 'db_config_value'));
    END IF;
    old_j := old_j - 'updated_at'::text;
    new_j := new_j - 'updated_at'::text;
    IF TG_OP = 'UPDATE' THEN
        IF TG_NARGS > 1 AND public.dataloader_session_is_service() THEN
            skip := TG_ARGV[1:];
        END IF;
        FOR k IN SELECT pg_catalog.jsonb_object_keys(new_j) LOOP
            IF old_j -> k IS DISTINCT FROM new_j -> k AND NOT k = ANY (skip) THEN
                diff_o := diff_o || pg_catalog.jsonb_build_object(k, old_j -> k);
                diff_n := diff_n || pg_catalog.jsonb_build_object(k, new_j -> k);
            END IF;
        END LOOP;
        IF diff_n = '{}'::jsonb THEN
            RETURN NULL;
        END IF;
        old_j := diff_o;
        new_j := diff_n;
    END IF;
    INSERT INTO public.control_audit
        (table_name, row_key, action, changed_by, acting_role, old_values, new_values)
    VALUES (TG_TABLE_NAME,
            coalesce(pg_catalog.to_jsonb(NEW) ->> TG_ARGV[0], pg_catalog.to_jsonb(OLD) ->> TG_ARGV[0]),
            TG_OP, session_user,
            nullif(pg_catalog.current_setting('role', true), 'none'), old_j, new_j);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS table_control_audit ON public.table_control;
CREATE TRIGGER table_control_audit
    AFTER INSERT OR UPDATE OR DELETE ON public.table_control
    FOR EACH ROW EXECUTE FUNCTION public.dataloader_audit_change(
        'control_key',
        -- the loop's own state: not recorded when the code location writes it
        'incremental_value', 'next_load_date_time', 'last_status', 'last_status_date_time',
        'last_load_date_time', 'last_dagster_run', 'last_databricks_run', 'last_message',
        'last_metadata_id', 'retry_count', 'retry_analysis_requested_at',
        'staging_model_processed');

DROP TRIGGER IF EXISTS source_connection_audit ON public.source_connection;
CREATE TRIGGER source_connection_audit
    AFTER INSERT OR UPDATE OR DELETE ON public.source_connection
    FOR EACH ROW EXECUTE FUNCTION public.dataloader_audit_change('connection_name');

-- Secret names (which scope and key a connection reads) are for those who may read
-- source_connection itself: connection admins and the code location. Others see that they
-- changed, not what they are. Same columns as 007's view, so rerunning 007 still works.
CREATE OR REPLACE FUNCTION public.dataloader_hide_secret_names(v jsonb) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT CASE
        WHEN v IS NULL OR pg_catalog.has_column_privilege(
                 'public.source_connection', 'secret_key', 'SELECT') THEN v
        ELSE (SELECT coalesce(pg_catalog.jsonb_object_agg(
                     e.key, CASE WHEN e.key IN ('secret_scope', 'secret_key')
                                      AND e.value <> 'null'::jsonb
                                 THEN '"(hidden: connection admins only)"'::jsonb
                                 ELSE e.value END), '{}'::jsonb)
              FROM pg_catalog.jsonb_each(v) AS e)
    END;
$$;

CREATE OR REPLACE VIEW public.v_control_audit AS
SELECT audit_id, changed_at, changed_by, acting_role, table_name, row_key, action,
       CASE WHEN table_name = 'source_connection'
            THEN public.dataloader_hide_secret_names(old_values) ELSE old_values END AS old_values,
       CASE WHEN table_name = 'source_connection'
            THEN public.dataloader_hide_secret_names(new_values) ELSE new_values END AS new_values
FROM public.control_audit
ORDER BY audit_id DESC;

-- ---- teams: which connections a row may name, under which destinations it may write ---------
-- A team is a PostgreSQL role (a group; on Lakebase a Databricks group's role): its members,
-- direct or indirect, are the team. The platform team (the tables' owner) creates teams and their
-- destination prefixes; connection admins grant connections to teams. An operator may insert or
-- update a control row only when one team of theirs holds both the row's connection (or, for an
-- inline row with a secret, a connection binding that secret) and a destination prefix covering
-- the row's destination_catalog (and destination_schema_name, unless the prefix is the whole
-- catalog). Enforced by row-level security on table_control, in the database, not in Python.
CREATE TABLE IF NOT EXISTS public.dataloader_team (
    team_name    text PRIMARY KEY
                 CONSTRAINT team_name_must_be_a_plain_name
                 CHECK (team_name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$'),
    member_role  text NOT NULL,
    description  text
);

CREATE TABLE IF NOT EXISTS public.dataloader_team_connection (
    team_name        text NOT NULL REFERENCES public.dataloader_team (team_name)
                     ON UPDATE CASCADE ON DELETE CASCADE,
    connection_name  text NOT NULL REFERENCES public.source_connection (connection_name)
                     ON UPDATE CASCADE ON DELETE CASCADE,
    PRIMARY KEY (team_name, connection_name)
);

-- destination_schema_name NULL: every schema of the catalog.
CREATE TABLE IF NOT EXISTS public.dataloader_team_destination (
    team_name                text NOT NULL REFERENCES public.dataloader_team (team_name)
                             ON UPDATE CASCADE ON DELETE CASCADE,
    destination_catalog      text NOT NULL,
    destination_schema_name  text
);
CREATE UNIQUE INDEX IF NOT EXISTS dataloader_team_destination_once
    ON public.dataloader_team_destination
    (team_name, pg_catalog.lower(destination_catalog),
     pg_catalog.lower(coalesce(destination_schema_name, '')));

-- Whether the session's login may write a row with these values (see above). SECURITY DEFINER:
-- it reads the connections' secret bindings, which operators may not read. With raise_why, a
-- refusal says what is missing instead of returning false (the WITH CHECK of the policies).
CREATE OR REPLACE FUNCTION public.dataloader_may_write_row(
    p_connection text, p_scope text, p_config jsonb, p_catalog text, p_schema text,
    raise_why boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    teams text[];
    secret text := CASE WHEN pg_catalog.jsonb_typeof(p_config) = 'object'
                        THEN p_config ->> 'password_secret' END;
BEGIN
    SELECT pg_catalog.array_agg(t.team_name ORDER BY t.team_name) INTO teams
    FROM public.dataloader_team t
    JOIN pg_catalog.pg_roles r ON r.rolname = t.member_role
    WHERE pg_catalog.pg_has_role(session_user, r.oid, 'MEMBER')
      AND EXISTS (SELECT 1 FROM public.dataloader_team_destination d
                  WHERE d.team_name = t.team_name
                    AND pg_catalog.lower(d.destination_catalog) = pg_catalog.lower(p_catalog)
                    AND (d.destination_schema_name IS NULL
                         OR pg_catalog.lower(d.destination_schema_name)
                            = pg_catalog.lower(p_schema)))
      AND CASE
            WHEN p_connection IS NOT NULL THEN EXISTS (
                SELECT 1 FROM public.dataloader_team_connection tc
                WHERE tc.team_name = t.team_name AND tc.connection_name = p_connection)
            WHEN secret IS NOT NULL THEN EXISTS (
                SELECT 1 FROM public.dataloader_team_connection tc
                JOIN public.source_connection s ON s.connection_name = tc.connection_name
                WHERE tc.team_name = t.team_name
                  AND s.secret_scope = p_scope AND s.secret_key = secret)
            ELSE true
          END;
    IF teams IS NOT NULL THEN
        RETURN true;
    END IF;
    IF raise_why THEN
        RAISE EXCEPTION 'new row for table_control violates row-level security policy '
                        '"table_control_team_boundary": no team of % holds %, together with the '
                        'destination prefix %.%',
                        session_user,
                        CASE WHEN p_connection IS NOT NULL
                             THEN pg_catalog.format('connection %L', p_connection)
                             WHEN secret IS NOT NULL
                             THEN pg_catalog.format('a connection binding secret %L of scope %L',
                                                    secret, p_scope)
                             ELSE 'a destination' END,
                        p_catalog, p_schema
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'SELECT * FROM v_my_teams shows your teams, their connections and '
                         'destination prefixes; the platform team grants them (docs/secrets.md).';
    END IF;
    RETURN false;
END;
$$;

-- What the session's login may use: its teams, their connections and destination prefixes.
CREATE OR REPLACE VIEW public.v_my_teams AS
SELECT t.team_name, t.member_role,
       (SELECT pg_catalog.array_agg(tc.connection_name ORDER BY tc.connection_name)
        FROM public.dataloader_team_connection tc WHERE tc.team_name = t.team_name) AS connections,
       (SELECT pg_catalog.array_agg(d.destination_catalog
                                    || coalesce('.' || d.destination_schema_name, '.*')
                                    ORDER BY 1)
        FROM public.dataloader_team_destination d WHERE d.team_name = t.team_name) AS destinations
FROM public.dataloader_team t
JOIN pg_catalog.pg_roles r ON r.rolname = t.member_role
WHERE pg_catalog.pg_has_role(session_user, r.oid, 'MEMBER');

DROP TRIGGER IF EXISTS dataloader_team_audit ON public.dataloader_team;
CREATE TRIGGER dataloader_team_audit
    AFTER INSERT OR UPDATE OR DELETE ON public.dataloader_team
    FOR EACH ROW EXECUTE FUNCTION public.dataloader_audit_change('team_name');
DROP TRIGGER IF EXISTS dataloader_team_connection_audit ON public.dataloader_team_connection;
CREATE TRIGGER dataloader_team_connection_audit
    AFTER INSERT OR UPDATE OR DELETE ON public.dataloader_team_connection
    FOR EACH ROW EXECUTE FUNCTION public.dataloader_audit_change('team_name');
DROP TRIGGER IF EXISTS dataloader_team_destination_audit ON public.dataloader_team_destination;
CREATE TRIGGER dataloader_team_destination_audit
    AFTER INSERT OR UPDATE OR DELETE ON public.dataloader_team_destination
    FOR EACH ROW EXECUTE FUNCTION public.dataloader_audit_change('team_name');

-- The policies name the roles, so they are (re)made with the grants, once the roles exist.
CREATE OR REPLACE FUNCTION public.dataloader_apply_row_security() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    ALTER TABLE public.table_control ENABLE ROW LEVEL SECURITY;
    DROP POLICY IF EXISTS table_control_service ON public.table_control;
    DROP POLICY IF EXISTS table_control_operators_read ON public.table_control;
    DROP POLICY IF EXISTS table_control_team_insert ON public.table_control;
    DROP POLICY IF EXISTS table_control_team_update ON public.table_control;
    -- The code location runs every table's loads.
    CREATE POLICY table_control_service ON public.table_control
        FOR ALL TO dataloader_service USING (true) WITH CHECK (true);
    -- Operators see every row (status is not a secret); they write only inside their teams.
    CREATE POLICY table_control_operators_read ON public.table_control
        FOR SELECT TO dataloader_operator USING (true);
    CREATE POLICY table_control_team_insert ON public.table_control
        FOR INSERT TO dataloader_operator
        WITH CHECK (public.dataloader_may_write_row(connection_name, db_kv_scope, db_config_value,
                    destination_catalog, destination_schema_name, true));
    CREATE POLICY table_control_team_update ON public.table_control
        FOR UPDATE TO dataloader_operator
        USING (public.dataloader_may_write_row(connection_name, db_kv_scope, db_config_value,
               destination_catalog, destination_schema_name))
        WITH CHECK (public.dataloader_may_write_row(connection_name, db_kv_scope, db_config_value,
                    destination_catalog, destination_schema_name, true));
END;
$$;
REVOKE ALL ON FUNCTION public.dataloader_apply_row_security() FROM PUBLIC;

-- One destination belongs to one row (case-insensitive: most lakehouse catalogs fold names).
DO $$
DECLARE
    dups text;
BEGIN
    SELECT pg_catalog.string_agg(pg_catalog.format('%s.%s.%s (%s)', destination_catalog,
               destination_schema_name, destination_table_name, keys), '; ')
    INTO dups
    FROM (SELECT pg_catalog.min(destination_catalog) AS destination_catalog,
                 pg_catalog.min(destination_schema_name) AS destination_schema_name,
                 pg_catalog.min(destination_table_name) AS destination_table_name,
                 pg_catalog.string_agg(control_key, ', ' ORDER BY control_key) AS keys
          FROM public.table_control
          GROUP BY pg_catalog.lower(destination_catalog), pg_catalog.lower(destination_schema_name),
                   pg_catalog.lower(destination_table_name)
          HAVING pg_catalog.count(*) > 1) AS d;
    IF dups IS NOT NULL THEN
        RAISE EXCEPTION 'table_control rows share a destination: %', dups
            USING HINT = 'Give each row its own destination_table_name (or delete the extra rows), '
                         'then migrate again: one destination belongs to one row.';
    END IF;
END;
$$;
CREATE UNIQUE INDEX IF NOT EXISTS destination_must_belong_to_one_row
    ON public.table_control (pg_catalog.lower(destination_catalog),
                             pg_catalog.lower(destination_schema_name),
                             pg_catalog.lower(destination_table_name));

-- ---- grants ------------------------------------------------------------------------------------
-- As 007's, with the schema named (current_schema() is pg_catalog under a pinned search_path).
CREATE OR REPLACE FUNCTION public.dataloader_apply_grants() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    t  text;
    missing text[];
BEGIN
    SELECT pg_catalog.array_agg(r) INTO missing
    FROM pg_catalog.unnest(ARRAY['dataloader_service', 'dataloader_operator',
                                 'dataloader_connection_admin']) AS r
    WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r);
    IF missing IS NOT NULL THEN
        RAISE NOTICE 'grants not applied: roles % do not exist', missing;
        RETURN;
    END IF;
    GRANT USAGE ON SCHEMA public TO dataloader_service, dataloader_operator,
        dataloader_connection_admin;
    -- The code location: runs loads and records them; reads connections, never edits them.
    GRANT SELECT, UPDATE ON public.table_control TO dataloader_service;
    GRANT SELECT, INSERT, UPDATE ON public.historical_metadata TO dataloader_service;
    GRANT SELECT, UPDATE ON public.control_keys_state TO dataloader_service;
    GRANT SELECT ON public.source_connection, public.v_table_status, public.v_load_history,
        public.v_control_audit, public.v_source_connections TO dataloader_service;
    IF pg_catalog.to_regclass('public.schema_migrations') IS NOT NULL THEN
        GRANT SELECT ON public.schema_migrations TO dataloader_service;
    END IF;
    FOR t IN
        SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = 'public' AND tablename NOT IN
            ('table_control', 'historical_metadata', 'control_keys_state', 'source_connection',
             'control_audit', 'schema_migrations', 'dataloader_time_zone_names',
             'dataloader_team', 'dataloader_team_connection', 'dataloader_team_destination')
    LOOP
        EXECUTE pg_catalog.format(
            'GRANT SELECT, INSERT, UPDATE, DELETE ON public.%I TO dataloader_service', t);
    END LOOP;
    -- Operators: add, edit and pause control rows; read the views. Not connections' secret
    -- bindings, not history internals, not the audit table itself (its view only).
    GRANT SELECT, INSERT, UPDATE ON public.table_control TO dataloader_operator;
    GRANT SELECT ON public.v_table_status, public.v_load_history, public.v_control_audit,
        public.v_source_connections TO dataloader_operator;
    -- The schedule trigger checks zones as the editing user (connection admins rename
    -- connections, which cascades to control rows); the service reads the list too.
    IF pg_catalog.to_regclass('public.dataloader_time_zone_names') IS NOT NULL THEN
        GRANT SELECT ON public.dataloader_time_zone_names TO dataloader_operator,
            dataloader_connection_admin, dataloader_service;
        -- 007 gave the service DML on it (its loop took every table it did not know): a row
        -- added there would pass any zone through the schedule CHECK.
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON public.dataloader_time_zone_names
            FROM dataloader_service;
    END IF;
    -- Teams (the platform team, i.e. the owner, writes teams and destination prefixes):
    -- everyone reads them; connection admins grant their connections to teams.
    GRANT SELECT ON public.dataloader_team, public.dataloader_team_connection,
        public.dataloader_team_destination, public.v_my_teams
        TO dataloader_service, dataloader_operator, dataloader_connection_admin;
    GRANT INSERT, DELETE ON public.dataloader_team_connection TO dataloader_connection_admin;
    -- 007's grants gave the service DML on every table they did not know; not on these.
    REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON public.dataloader_team,
        public.dataloader_team_connection, public.dataloader_team_destination
        FROM dataloader_service, dataloader_operator;
    PERFORM public.dataloader_apply_row_security();
    -- Connection admins: connections and their secret bindings; see who uses them.
    GRANT SELECT, INSERT, UPDATE, DELETE ON public.source_connection TO dataloader_connection_admin;
    GRANT SELECT ON public.v_control_audit, public.v_source_connections, public.v_table_status
        TO dataloader_connection_admin;
END;
$$;
REVOKE ALL ON FUNCTION public.dataloader_apply_grants() FROM PUBLIC;

-- Nobody but the owner creates objects in public (PostgreSQL 15+ default; older servers and
-- databases upgraded from them still grant it): a function of a login's own in public would
-- otherwise compete with pg_catalog's for an unqualified call inside our functions.
DO $$
BEGIN
    REVOKE CREATE ON SCHEMA public FROM PUBLIC;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'CREATE on schema public not revoked from PUBLIC: % does not own it (see '
                 'docs/secrets.md)', current_user;
END;
$$;

SELECT public.dataloader_apply_grants();
