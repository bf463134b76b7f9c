"""What the pipeline tells people: load records and status lines, statistics math, progress."""
