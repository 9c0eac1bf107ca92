"""Store stage: OUT on disk. Its layout, locks and settings guard, the part writer and its
commit protocol, the index of current records, reading OUT back, compaction, the record schema
and per-file subtitles.
"""
