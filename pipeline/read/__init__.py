"""Reading: sources, blocked gzip decompression, byte ranges, and parsing lines into rows."""
