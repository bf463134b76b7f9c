"""Distributed processing of gzip ad-impression files into Apache Iceberg tables.

Data flows one way: read (blocked gzip) → parse → partition → join → update → stats → report.
"""

__version__ = "0.1.0"

import os as _os

# Arrow buffers that arrive through Dask's serialization (the broadcast dimension) are not always aligned;
# Acero's hash join would warn about each one. Copying them into aligned memory is cheap for the small side.
_os.environ.setdefault("ACERO_ALIGNMENT_HANDLING", "reallocate")
