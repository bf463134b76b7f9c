"""Column names and Arrow schemas of the impression rows and the quarantine, in one place."""
import pyarrow as pa

COLUMNS = ["ad_date", "impression_id", "campaign_id", "video_id", "viewing_percentage"]

# What parsing hands to the partition stage: the low-cardinality strings stay dictionary-encoded (less memory
# while rows wait for their partition file, cheap sorting and bucketing); they become strings when written.
_DICT = pa.dictionary(pa.int32(), pa.string())
PARSED_SCHEMA = pa.schema([
    pa.field("ad_date", pa.date32()),
    pa.field("impression_id", pa.int64()),
    pa.field("campaign_id", _DICT),
    pa.field("video_id", _DICT),
    pa.field("viewing_percentage", pa.float64()),
])

QUARANTINE_SCHEMA = pa.schema([
    pa.field("load_id", pa.string()),
    pa.field("source", pa.string()),
    pa.field("byte_offset", pa.int64()),
    pa.field("reason", pa.string()),
    pa.field("line", pa.binary()),
])

# Quarantine reasons (DESIGN.md): field_count, bad_date, bad_number, out_of_range, empty_campaign, encoding,
# line_too_long.
