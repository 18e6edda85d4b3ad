"""Recorded events read back: the NDJSON readers and offline analysis.

Nothing here captures anything. `reader.read_chunks(paths)` streams agent
output (or other tools' minimal files) as columnar chunks, DuckDB first
(`scan`) and a line-checking reader for what DuckDB cannot take;
`analyze.analyze(paths, ...)` replays them through policy and the detectors.
"""
