"""The Spark engine: JDBC or Unity Catalog source -> Delta with Spark SQL; ``engine.run_spark_load``."""
