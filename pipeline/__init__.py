"""Distributed processing of gzip ad-impression files into Apache Iceberg tables.

Data flows one way: read (blocked gzip) → parse → partition → join → update → stats → report.
"""

__version__ = "0.1.0"
