"""Iceberg tables: the one adapter around pyiceberg (catalog, schemas, bucket transform, writes, commits)."""
