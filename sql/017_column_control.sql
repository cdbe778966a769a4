-- Column control and the schema contract per control row (docs/loader.md, "Column control" and
-- "Schema contract"). Rerunnable: ADD COLUMN IF NOT EXISTS, CREATE OR REPLACE, constraints and
-- triggers added by name once.
--
-- columns_exclude: source columns that never leave the source (the loader's SELECT names only the
--                  others).
-- columns_hash:    source columns whose values are replaced by HMAC-SHA-256 (hex) with the key of
--                  the row's source_connection (hash_secret_scope / hash_secret_key, set by the
--                  connection admins like the password's secret_scope / secret_key), so equal
--                  values still join and none can be read back.
-- A merge key, the incremental column or the JDBC partition column can be neither: refused here,
-- naming the column. Changing either list makes the next load rebuild the table (the loader
-- compares the lists with the ones its last commit recorded).
-- schema_change:   evolve (default: new source columns are added, safe widening allowed) |
--                  freeze (any added, dropped or retyped column fails the load before it writes) |
--                  discard_new (new source columns are not loaded).

ALTER TABLE table_control ADD COLUMN IF NOT EXISTS columns_exclude text[];
ALTER TABLE table_control ADD COLUMN IF NOT EXISTS columns_hash text[];
ALTER TABLE table_control ADD COLUMN IF NOT EXISTS schema_change text NOT NULL DEFAULT 'evolve';
ALTER TABLE source_connection ADD COLUMN IF NOT EXISTS hash_secret_scope text;
ALTER TABLE source_connection ADD COLUMN IF NOT EXISTS hash_secret_key text;

DO $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT * FROM (VALUES
            ('table_control', 'schema_change_must_be_evolve_freeze_or_discard_new',
             'CHECK (schema_change IN (''evolve'', ''freeze'', ''discard_new''))'),
            ('source_connection', 'hash_secret_names_must_be_at_most_200_characters',
             'CHECK (length(hash_secret_scope) <= 200 AND length(hash_secret_key) <= 200)')
        ) AS t(tbl, name, def)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = c.name) THEN
            EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', c.tbl, c.name, c.def);
        END IF;
    END LOOP;
END;
$$;

-- Why a row's column lists cannot be used (NULL: they can). Pure, so the trigger below and any
-- reader of the rule agree.
CREATE OR REPLACE FUNCTION public.dataloader_column_control_problem(
    columns_exclude text[], columns_hash text[], merge_keys text[], incremental_column text,
    jdbc_partition_column text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
    SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    list_name text;
    names text[];
    n text;
    seen text[];
BEGIN
    FOREACH list_name IN ARRAY ARRAY['columns_exclude', 'columns_hash'] LOOP
        names := CASE list_name WHEN 'columns_exclude' THEN columns_exclude ELSE columns_hash END;
        IF names IS NULL THEN
            CONTINUE;
        END IF;
        IF pg_catalog.cardinality(names) > 500 THEN
            RETURN pg_catalog.format('%s names %s columns; at most 500', list_name,
                                     pg_catalog.cardinality(names));
        END IF;
        seen := ARRAY[]::text[];
        FOREACH n IN ARRAY names LOOP
            IF n IS NULL OR n = '' OR pg_catalog.length(n) > 255 THEN
                RETURN pg_catalog.format('%s holds %s: every entry must be a column name of 1-255 '
                                         'characters', list_name, pg_catalog.quote_nullable(n));
            END IF;
            IF pg_catalog.lower(n) = ANY (seen) THEN
                RETURN pg_catalog.format('%s names column %I twice', list_name, n);
            END IF;
            seen := seen || pg_catalog.lower(n);
            IF pg_catalog.lower(n) = ANY (SELECT pg_catalog.lower(k)
                                         FROM pg_catalog.unnest(merge_keys) AS k) THEN
                RETURN pg_catalog.format('column %I is a merge key: it cannot be in %s (the '
                                         'destination needs its values to match rows)', n, list_name);
            END IF;
            IF pg_catalog.lower(n) = pg_catalog.lower(incremental_column) THEN
                RETURN pg_catalog.format('column %I is the incremental_column: it cannot be in %s '
                                         '(the watermark is read from its values)', n, list_name);
            END IF;
            IF pg_catalog.lower(n) = pg_catalog.lower(jdbc_partition_column) THEN
                RETURN pg_catalog.format('column %I is the jdbc_partition_column: it cannot be in '
                                         '%s', n, list_name);
            END IF;
            IF list_name = 'columns_hash' AND pg_catalog.lower(n) = ANY (
                    SELECT pg_catalog.lower(e) FROM pg_catalog.unnest(columns_exclude) AS e) THEN
                RETURN pg_catalog.format('column %I is in both columns_exclude and columns_hash: '
                                         'name it in one', n);
            END IF;
        END LOOP;
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION public.dataloader_refuse_bad_column_control() RETURNS trigger
LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    problem text;
BEGIN
    problem := public.dataloader_column_control_problem(
        NEW.columns_exclude, NEW.columns_hash, NEW.merge_keys, NEW.incremental_column,
        NEW.jdbc_partition_column);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'new row for table_control % violates check constraint "%": %',
                        left(NEW.control_key, 200), 'column_control_must_spare_keys_and_cursor',
                        problem
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'column_control_must_spare_keys_and_cursor',
                  HINT = 'Merge keys, the incremental column and the JDBC partition column are '
                         'loaded as they are (docs/loader.md, "Column control").';
    END IF;
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS table_control_column_control ON table_control;
CREATE TRIGGER table_control_column_control
    BEFORE INSERT OR UPDATE OF columns_exclude, columns_hash, merge_keys, incremental_column,
        jdbc_partition_column ON table_control
    FOR EACH ROW EXECUTE FUNCTION public.dataloader_refuse_bad_column_control();

-- The audit view hides the hash key's secret names from those who may not read connections,
-- like the password's (sql/011).
CREATE OR REPLACE FUNCTION public.dataloader_hide_secret_names(v jsonb) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT CASE
        WHEN v IS NULL OR pg_catalog.has_column_privilege(
                 'public.source_connection', 'secret_key', 'SELECT') THEN v
        ELSE (SELECT coalesce(pg_catalog.jsonb_object_agg(
                     e.key, CASE WHEN e.key IN ('secret_scope', 'secret_key', 'hash_secret_scope',
                                                'hash_secret_key')
                                      AND e.value <> 'null'::jsonb
                                 THEN '"(hidden: connection admins only)"'::jsonb
                                 ELSE e.value END), '{}'::jsonb)
              FROM pg_catalog.jsonb_each(v) AS e)
    END;
$$;

COMMENT ON COLUMN table_control.columns_exclude IS
    'Source columns never read (the SELECT names the others); docs/loader.md "Column control"';
COMMENT ON COLUMN table_control.columns_hash IS
    'Source columns loaded as HMAC-SHA-256 hex with the connection''s hash key';
COMMENT ON COLUMN table_control.schema_change IS
    'Schema contract: evolve (default) | freeze | discard_new (docs/loader.md)';
COMMENT ON COLUMN source_connection.hash_secret_scope IS
    'Scope of the secret whose value keys the HMAC of columns_hash (NULL: no hashing)';
COMMENT ON COLUMN source_connection.hash_secret_key IS
    'Key of the secret whose value keys the HMAC of columns_hash (NULL: no hashing)';
