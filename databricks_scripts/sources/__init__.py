"""Source readers (Arrow record batches, streaming), their connections, type mapping and SQL text."""
