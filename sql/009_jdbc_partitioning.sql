-- Parallel JDBC reads on the Spark engine (docs/databricks.md, "Partitioned JDBC reads").
-- Rerunnable: ADD COLUMN IF NOT EXISTS; constraints added by name once.
--
-- jdbc_partition_column: the source column Spark splits the read on (a numeric, date or timestamp
--   column). NULL: the single merge key, else the incremental column, when it can be split.
-- jdbc_num_partitions: the most JDBC connections one load of this table opens at once. NULL: the
--   loader's default cap (DATALOADER_JDBC_MAX_PARTITIONS); 1 reads on one connection always.

ALTER TABLE table_control ADD COLUMN IF NOT EXISTS jdbc_partition_column text NULL;
ALTER TABLE table_control ADD COLUMN IF NOT EXISTS jdbc_num_partitions int NULL;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conname = 'jdbc_partition_column_must_not_be_blank') THEN
        ALTER TABLE table_control ADD CONSTRAINT jdbc_partition_column_must_not_be_blank
            CHECK (jdbc_partition_column IS NULL OR btrim(jdbc_partition_column) <> '');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conname = 'jdbc_num_partitions_must_be_between_1_and_256') THEN
        ALTER TABLE table_control ADD CONSTRAINT jdbc_num_partitions_must_be_between_1_and_256
            CHECK (jdbc_num_partitions IS NULL OR jdbc_num_partitions BETWEEN 1 AND 256);
    END IF;
END;
$$;

COMMENT ON COLUMN table_control.jdbc_partition_column IS
    'Spark engine: source column a JDBC read is split on (numeric/date/timestamp); NULL = the single merge key or the incremental column';
COMMENT ON COLUMN table_control.jdbc_num_partitions IS
    'Spark engine: most JDBC connections one load opens; NULL = DATALOADER_JDBC_MAX_PARTITIONS, 1 = one connection';
