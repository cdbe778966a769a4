"""The two engines that write a load: ``arrow`` (deltalake, local and small) and ``spark``
(Databricks). Each applies the same rules from ``databricks_scripts.load``."""
