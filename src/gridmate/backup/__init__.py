"""Backups and first-boot restore: preseed, the pg_dump hook, backup freshness."""
