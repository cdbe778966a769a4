"""Where a Pipes script runs: a local subprocess or a Databricks run, behind PipesDatabricksResource.run_script."""
