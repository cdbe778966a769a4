-- Control table and load history for DataLoader.
-- Rerunnable: every statement is IF NOT EXISTS / OR REPLACE; constraints are added by name once.
-- Constraint names are the message a person sees when the database refuses a bad edit, so they say
-- what is required.

CREATE OR REPLACE FUNCTION dataloader_is_valid_timezone(tz text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    -- Declared IMMUTABLE so it can back a CHECK; the zone database only grows between releases.
    PERFORM now() AT TIME ZONE tz;
    RETURN true;
EXCEPTION WHEN OTHERS THEN
    RETURN false;
END;
$$;

CREATE OR REPLACE FUNCTION dataloader_is_valid_cron(expr text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    -- Five whitespace-separated fields (minute hour day-of-month month day-of-week), each made of
    -- digits, names, '*', '?', ',', '-', '/'; or one of the usual @-macros.
    SELECT expr ~* ('^\s*(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|'
                    || '(' || f || '\s+){4}' || f || ')\s*$')
    FROM (SELECT '([0-9*?,/#lw-]|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec'
                 || '|mon|tue|wed|thu|fri|sat|sun)+' AS f) AS field;
$$;

CREATE TABLE IF NOT EXISTS table_control (
    config_id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    control_key                 text        NOT NULL,
    source_catalog              text,
    source_schema_name          text,
    source_table_name           text        NOT NULL,
    destination_catalog         text        NOT NULL,
    destination_schema_name     text        NOT NULL,
    destination_table_name      text        NOT NULL,
    db_type                     text        NOT NULL,
    db_config_value             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    db_kv_scope                 text,
    load_strategy               text        NOT NULL DEFAULT 'full',
    incremental_column          text,
    incremental_value           text,
    merge_keys                  text[],
    lookback_window             interval    NOT NULL DEFAULT interval '0',
    is_active                   boolean     NOT NULL DEFAULT true,
    schedule_cron               text,
    schedule_timezone           text        NOT NULL DEFAULT 'UTC',
    schedule_interval           interval,
    next_load_date_time         timestamptz DEFAULT now(),
    force_full_reload           boolean     NOT NULL DEFAULT false,
    last_status                 text,
    last_status_date_time       timestamptz,
    last_load_date_time         timestamptz,
    last_dagster_run            text,
    last_databricks_run         text,
    last_message                text,
    last_metadata_id            bigint,
    retry_count                 integer     NOT NULL DEFAULT 0,
    needs_review                boolean     NOT NULL DEFAULT false,
    retry_analysis_requested_at timestamptz,
    staging_model_processed     boolean     NOT NULL DEFAULT false,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS historical_metadata (
    metadata_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    config_id           bigint      NOT NULL REFERENCES table_control (config_id) ON DELETE CASCADE,
    control_key         text        NOT NULL,
    triggered_by        text        NOT NULL DEFAULT 'sensor',
    status              text        NOT NULL DEFAULT 'Queued',
    load_strategy       text,
    queued_at           timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    ended_at            timestamptz,
    rows_read           bigint,
    rows_written        bigint,
    watermark_before    text,
    watermark_after     text,
    message             text,
    dagster_run_id      text,
    dagster_run_url     text,
    databricks_run_url  text,
    retry_decision      text,
    retry_confidence    double precision,
    retry_reason        text,
    retry_decider       text,
    retry_analysed_at   timestamptz
);

DO $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT * FROM (VALUES
            ('table_control', 'control_key_must_be_unique',
             'UNIQUE (control_key)'),
            ('table_control', 'last_status_must_be_null_queued_in_progress_succeeded_or_failed',
             'CHECK (last_status IS NULL OR last_status IN (''Queued'', ''In Progress'', ''Succeeded'', ''Failed''))'),
            ('table_control', 'load_strategy_must_be_full_incremental_or_merge',
             'CHECK (load_strategy IN (''full'', ''incremental'', ''merge''))'),
            ('table_control', 'db_type_must_be_postgresql_mysql_sqlserver_oracle_or_databricks',
             'CHECK (db_type IN (''postgresql'', ''mysql'', ''sqlserver'', ''oracle'', ''databricks''))'),
            ('table_control', 'merge_strategy_requires_merge_keys',
             'CHECK (load_strategy <> ''merge'' OR coalesce(cardinality(merge_keys), 0) > 0)'),
            ('table_control', 'incremental_strategy_requires_incremental_column',
             'CHECK (load_strategy <> ''incremental'' OR nullif(btrim(incremental_column), '''') IS NOT NULL)'),
            ('table_control', 'schedule_cron_must_be_five_fields_or_a_macro',
             'CHECK (schedule_cron IS NULL OR dataloader_is_valid_cron(schedule_cron))'),
            ('table_control', 'schedule_timezone_must_be_a_known_time_zone',
             'CHECK (dataloader_is_valid_timezone(schedule_timezone))'),
            ('table_control', 'schedule_is_either_cron_or_interval_not_both',
             'CHECK (schedule_cron IS NULL OR schedule_interval IS NULL)'),
            ('table_control', 'schedule_interval_must_be_positive',
             'CHECK (schedule_interval IS NULL OR schedule_interval > interval ''0'')'),
            ('table_control', 'lookback_window_must_not_be_negative',
             'CHECK (lookback_window >= interval ''0'')'),
            ('table_control', 'retry_count_must_not_be_negative',
             'CHECK (retry_count >= 0)'),
            ('table_control', 'db_config_value_must_be_an_object_without_password',
             'CHECK (jsonb_typeof(db_config_value) = ''object'' AND NOT db_config_value ? ''password'')'),
            ('table_control', 'control_key_must_not_be_blank',
             'CHECK (btrim(control_key) <> '''')'),
            ('historical_metadata', 'history_status_must_be_queued_in_progress_succeeded_or_failed',
             'CHECK (status IN (''Queued'', ''In Progress'', ''Succeeded'', ''Failed''))'),
            ('historical_metadata', 'history_triggered_by_must_be_sensor_ui_or_retry',
             'CHECK (triggered_by IN (''sensor'', ''ui'', ''retry''))'),
            ('historical_metadata', 'history_retry_decision_must_be_known',
             'CHECK (retry_decision IS NULL OR retry_decision IN (''Retry Recommended'', ''Requires Review''))')
        ) AS t(tbl, name, def)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = c.name) THEN
            EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', c.tbl, c.name, c.def);
        END IF;
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION dataloader_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS table_control_touch_updated_at ON table_control;
CREATE TRIGGER table_control_touch_updated_at
    BEFORE UPDATE ON table_control
    FOR EACH ROW EXECUTE FUNCTION dataloader_touch_updated_at();
