-- Lakehouse Federation for a source connection (docs/databricks.md, "Serverless compute and
-- Lakehouse Federation"). Rerunnable: ADD COLUMN IF NOT EXISTS, the constraint added by name once.
--
-- foreign_catalog: the Unity Catalog foreign catalog that mirrors this connection's database
--                  (CREATE CONNECTION ... / CREATE FOREIGN CATALOG ... in Databricks). On
--                  Databricks the Spark engine then reads <foreign_catalog>.<schema>.<table>
--                  through Unity Catalog instead of over JDBC: the one way serverless compute
--                  reaches a database outside Databricks, and it needs no password in the job.
--                  Local (Arrow engine) loads keep connecting to host/port directly.
-- Set by connection admins, like the rest of the connection: an operator's row names the
-- connection and cannot point a load at another catalog.

ALTER TABLE source_connection ADD COLUMN IF NOT EXISTS foreign_catalog text;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conname = 'foreign_catalog_must_be_a_plain_name') THEN
        ALTER TABLE source_connection ADD CONSTRAINT foreign_catalog_must_be_a_plain_name
            CHECK (foreign_catalog ~ '^[A-Za-z_][A-Za-z0-9_]{0,254}$');
    END IF;
END;
$$;
