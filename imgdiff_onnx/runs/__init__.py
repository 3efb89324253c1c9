"""Dataset runs: JSON Lines in and out (jsonlines, records, jsonl), the results file's lock and run
record (runfile), stopping on signals, progress bars, and the same run on Ray actors (ray_run).
`records` reads and writes result lines without the engine, so reviewing needs no onnxruntime.
"""
