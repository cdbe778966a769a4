-- Source connections as their own objects, least-privilege roles, and an audit trail.
-- Rerunnable: IF NOT EXISTS / OR REPLACE; constraints added by name once; roles created only when
-- missing (and only when the migrating user may create roles). See docs/secrets.md.

-- A source database, once: where it is, who logs in, how (TLS), and which secret holds the
-- password. Edited by the connection-admin role only; a control row names it.
CREATE TABLE IF NOT EXISTS source_connection (
    connection_name          text        PRIMARY KEY,
    db_type                  text        NOT NULL,
    host                     text        NOT NULL,
    port                     integer,
    database                 text,
    user_name                text,
    -- NULL: require TLS for a host that is not loopback (127.0.0.0/8, ::1, localhost, a socket
    -- directory), the driver's default on loopback. 'disable' turns TLS off for this connection.
    tls_mode                 text,
    tls_ca_file              text,
    secret_scope             text,
    secret_key               text,
    connect_timeout_seconds  integer,
    description              text,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE table_control ADD COLUMN IF NOT EXISTS connection_name text;

DO $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT * FROM (VALUES
            ('source_connection', 'connection_name_must_be_a_plain_name',
             'CHECK (connection_name ~ ''^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$'')'),
            ('source_connection', 'connection_db_type_must_be_postgresql_mysql_sqlserver_or_oracle',
             'CHECK (db_type IN (''postgresql'', ''mysql'', ''sqlserver'', ''oracle''))'),
            ('source_connection', 'connection_host_must_not_be_blank',
             'CHECK (btrim(host) <> '''')'),
            ('source_connection', 'connection_port_must_be_1_to_65535',
             'CHECK (port IS NULL OR port BETWEEN 1 AND 65535)'),
            ('source_connection', 'connection_tls_mode_must_be_disable_require_verify_ca_or_full',
             'CHECK (tls_mode IS NULL OR tls_mode IN (''disable'', ''require'', ''verify-ca'', ''verify-full''))'),
            ('source_connection', 'connection_secret_needs_both_scope_and_key',
             'CHECK ((secret_scope IS NULL) = (secret_key IS NULL))'),
            ('source_connection', 'connection_connect_timeout_must_be_positive',
             'CHECK (connect_timeout_seconds IS NULL OR connect_timeout_seconds > 0)'),
            ('table_control', 'connection_name_must_name_a_source_connection',
             'FOREIGN KEY (connection_name) REFERENCES source_connection (connection_name)'
             ' ON UPDATE CASCADE ON DELETE RESTRICT'),
            ('table_control', 'connection_rows_keep_host_user_tls_secret_out_of_db_config',
             'CHECK (connection_name IS NULL OR NOT (db_config_value ?| ARRAY[''host'', ''port'','
             ' ''database'', ''user'', ''password_secret'', ''sslmode'', ''sslrootcert'','
             ' ''service_name'', ''connect_timeout'']))')
        ) AS t(tbl, name, def)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = c.name) THEN
            EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', c.tbl, c.name, c.def);
        END IF;
    END LOOP;
END;
$$;

CREATE INDEX IF NOT EXISTS table_control_connection_name_idx ON table_control (connection_name);
-- The binding lookup for rows that still carry an inline host: the secret, then its destination.
CREATE INDEX IF NOT EXISTS source_connection_secret_idx
    ON source_connection (secret_scope, secret_key);

DROP TRIGGER IF EXISTS source_connection_touch_updated_at ON source_connection;
CREATE TRIGGER source_connection_touch_updated_at
    BEFORE UPDATE ON source_connection
    FOR EACH ROW EXECUTE FUNCTION dataloader_touch_updated_at();

-- ---- audit ------------------------------------------------------------------------------------
-- Who changed a control row's configuration or a connection, and when. Written by a SECURITY
-- DEFINER trigger, so the roles that edit the tables cannot write or rewrite the trail.
CREATE TABLE IF NOT EXISTS control_audit (
    audit_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name   text        NOT NULL,
    row_key      text        NOT NULL,
    action       text        NOT NULL,
    changed_by   text        NOT NULL,
    acting_role  text,
    changed_at   timestamptz NOT NULL DEFAULT now(),
    old_values   jsonb,
    new_values   jsonb
);
CREATE INDEX IF NOT EXISTS control_audit_row_idx ON control_audit (table_name, row_key, audit_id);

-- TG_ARGV[0]: the key column; the other arguments: the audited columns ('*' = all). An UPDATE that
-- changes no audited column (the loader's status, watermark and run links) writes nothing.
-- changed_by is session_user (the login, also after SET ROLE); acting_role is the SET ROLE role.
CREATE OR REPLACE FUNCTION dataloader_audit_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    old_j  jsonb := CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END;
    new_j  jsonb := CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END;
    cols   text[] := TG_ARGV[1:];
    k      text;
    diff_o jsonb := '{}'::jsonb;
    diff_n jsonb := '{}'::jsonb;
BEGIN
    -- Nothing secret is ever stored in these tables (a CHECK refuses a password key); strip the
    -- password-shaped keys anyway, so the trail can never become a copy of one.
    old_j := (((old_j #- '{db_config_value,password}'::text[])
                      #- '{db_config_value,passwd}'::text[])
                      #- '{db_config_value,pwd}'::text[]) - 'updated_at'::text;
    new_j := (((new_j #- '{db_config_value,password}'::text[])
                      #- '{db_config_value,passwd}'::text[])
                      #- '{db_config_value,pwd}'::text[]) - 'updated_at'::text;
    IF cols <> ARRAY['*'] THEN
        old_j := (SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(old_j) e
                  WHERE e.key = ANY (cols));
        new_j := (SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(new_j) e
                  WHERE e.key = ANY (cols));
    END IF;
    IF TG_OP = 'UPDATE' THEN
        FOR k IN SELECT jsonb_object_keys(coalesce(new_j, '{}'::jsonb)) LOOP
            IF old_j -> k IS DISTINCT FROM new_j -> k THEN
                diff_o := diff_o || jsonb_build_object(k, old_j -> k);
                diff_n := diff_n || jsonb_build_object(k, new_j -> k);
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
            coalesce(to_jsonb(NEW) ->> TG_ARGV[0], to_jsonb(OLD) ->> TG_ARGV[0]),
            TG_OP, session_user, nullif(current_setting('role', true), 'none'), old_j, new_j);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS table_control_audit ON table_control;
CREATE TRIGGER table_control_audit
    AFTER INSERT OR UPDATE OR DELETE ON table_control
    FOR EACH ROW EXECUTE FUNCTION dataloader_audit_change(
        'control_key', 'control_key', 'source_catalog', 'source_schema_name', 'source_table_name',
        'destination_catalog', 'destination_schema_name', 'destination_table_name', 'db_type',
        'db_config_value', 'db_kv_scope', 'connection_name', 'load_strategy', 'incremental_column',
        'merge_keys', 'lookback_window', 'is_active', 'schedule_cron', 'schedule_timezone',
        'schedule_interval', 'force_full_reload', 'needs_review');

DROP TRIGGER IF EXISTS source_connection_audit ON source_connection;
CREATE TRIGGER source_connection_audit
    AFTER INSERT OR UPDATE OR DELETE ON source_connection
    FOR EACH ROW EXECUTE FUNCTION dataloader_audit_change('connection_name', '*');

CREATE OR REPLACE VIEW v_control_audit AS
SELECT audit_id, changed_at, changed_by, acting_role, table_name, row_key, action,
       old_values, new_values
FROM control_audit
ORDER BY audit_id DESC;

-- What an operator may know of a connection: enough to name it in a row, not its secret binding.
CREATE OR REPLACE VIEW v_source_connections AS
SELECT s.connection_name, s.db_type, s.host, s.port, s.database, s.description,
       (SELECT count(*) FROM table_control c WHERE c.connection_name = s.connection_name)
           AS tables_using
FROM source_connection s;

-- Operators insert rows: the control-key counter of 004 is updated on their behalf.
ALTER FUNCTION dataloader_bump_control_keys_version() SECURITY DEFINER;
ALTER FUNCTION dataloader_bump_control_keys_version() SET search_path = pg_catalog, public;

-- ---- roles ------------------------------------------------------------------------------------
-- Three NOLOGIN group roles; people, groups and service principals are made members of them
-- (docs/secrets.md). Created only if missing and only if this user may create roles: otherwise a
-- NOTICE says so, and an administrator creates them and runs SELECT dataloader_apply_grants().
DO $$
DECLARE
    r text;
    may_create boolean;
BEGIN
    SELECT rolsuper OR rolcreaterole INTO may_create FROM pg_roles WHERE rolname = current_user;
    FOREACH r IN ARRAY ARRAY['dataloader_service', 'dataloader_operator',
                             'dataloader_connection_admin'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            IF may_create THEN
                BEGIN
                    EXECUTE format('CREATE ROLE %I NOLOGIN', r);
                EXCEPTION WHEN duplicate_object OR unique_violation THEN
                    NULL;  -- another database of this server created it at the same moment
                END;
            ELSE
                RAISE NOTICE 'role % not created: % may not create roles (see docs/secrets.md)',
                    r, current_user;
            END IF;
        END IF;
    END LOOP;
END;
$$;

-- The grants, as a function so a later migration (a new table) or an administrator (roles created
-- afterwards) can apply them again. Tables this file does not know (added by other migrations)
-- get SELECT, INSERT, UPDATE, DELETE for the service role only.
CREATE OR REPLACE FUNCTION dataloader_apply_grants() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s  text := current_schema();
    t  text;
    missing text[];
BEGIN
    SELECT array_agg(r) INTO missing
    FROM unnest(ARRAY['dataloader_service', 'dataloader_operator',
                      'dataloader_connection_admin']) AS r
    WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r);
    IF missing IS NOT NULL THEN
        RAISE NOTICE 'grants not applied: roles % do not exist', missing;
        RETURN;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO dataloader_service, dataloader_operator,'
                   ' dataloader_connection_admin', s);
    -- The code location: runs loads and records them; reads connections, never edits them.
    EXECUTE format('GRANT SELECT, UPDATE ON %I.table_control TO dataloader_service', s);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON %I.historical_metadata TO dataloader_service', s);
    EXECUTE format('GRANT SELECT, UPDATE ON %I.control_keys_state TO dataloader_service', s);
    EXECUTE format('GRANT SELECT ON %I.source_connection, %I.v_table_status, %I.v_load_history,'
                   ' %I.v_control_audit, %I.v_source_connections TO dataloader_service',
                   s, s, s, s, s);
    IF to_regclass(format('%I.schema_migrations', s)) IS NOT NULL THEN
        EXECUTE format('GRANT SELECT ON %I.schema_migrations TO dataloader_service', s);
    END IF;
    FOR t IN
        SELECT tablename FROM pg_tables WHERE schemaname = s AND tablename NOT IN
            ('table_control', 'historical_metadata', 'control_keys_state', 'source_connection',
             'control_audit', 'schema_migrations')
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I.%I TO dataloader_service', s, t);
    END LOOP;
    -- Operators: add, edit and pause control rows; read the views. Not connections' secret
    -- bindings, not history internals, not the audit table itself (its view only).
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON %I.table_control TO dataloader_operator', s);
    EXECUTE format('GRANT SELECT ON %I.v_table_status, %I.v_load_history, %I.v_control_audit,'
                   ' %I.v_source_connections TO dataloader_operator', s, s, s, s);
    -- The schedule-rule trigger (sql/005) checks a row's time zone against this list as the
    -- user who edits the row: operators and connection admins (who rename connections, cascading
    -- to control rows) read it too.
    IF to_regclass(format('%I.dataloader_time_zone_names', s)) IS NOT NULL THEN
        EXECUTE format('GRANT SELECT ON %I.dataloader_time_zone_names TO dataloader_operator,'
                       ' dataloader_connection_admin', s);
    END IF;
    -- Connection admins: connections and their secret bindings; see who uses them.
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I.source_connection'
                   ' TO dataloader_connection_admin', s);
    EXECUTE format('GRANT SELECT ON %I.v_control_audit, %I.v_source_connections,'
                   ' %I.v_table_status TO dataloader_connection_admin', s, s, s);
END;
$$;
REVOKE ALL ON FUNCTION dataloader_apply_grants() FROM PUBLIC;

SELECT dataloader_apply_grants();
