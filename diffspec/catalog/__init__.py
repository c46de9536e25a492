"""The catalog: Parquet parts, DuckDB views, the output lock."""
