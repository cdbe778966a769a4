"""The Arrow engine: source record batches -> Delta with deltalake (delta-rs); ``engine.run_arrow_load``."""
