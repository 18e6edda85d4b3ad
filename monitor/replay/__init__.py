"""Recorded events read back: the NDJSON readers, the Parquet segments and offline analysis.

Nothing here captures anything. `reader.read_chunks(paths)` streams agent
output (or other tools' minimal files) as columnar chunks, DuckDB first
(`scan`), then pyarrow's blocks and line by line for what DuckDB cannot
take, all three reading the fields of one table (`fields`). `columnar`
writes a closed NDJSON file's Parquet segment and reads it back as the same
chunks; `sources` picks one file per period (`periods` names them);
`analyze.analyze(paths, ...)` replays them through policy and the detectors.
"""
