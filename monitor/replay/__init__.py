"""Recorded events read back: the NDJSON readers and offline analysis.

Nothing here captures anything. `reader.read_chunks(paths)` streams agent
output (or other tools' minimal files) as columnar chunks, DuckDB first
(`scan`), then pyarrow's blocks and line by line for what DuckDB cannot
take, all three reading the fields of one table (`fields`);
`analyze.analyze(paths, ...)` replays them through policy and the detectors.
"""
