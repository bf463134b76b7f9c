"""Imported last by the fork server (cluster/forkserver.py): collect once, then freeze what the imports built.

Every worker forked afterwards inherits that frozen generation: its own collections never walk the imported
modules' objects (~0.1 s per worker before its first task, and again at every full collection), and they leave
those pages shared with the server instead of touching, and so copying, them."""
import gc

gc.collect()
gc.freeze()
