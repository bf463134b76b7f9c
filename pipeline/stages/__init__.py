"""The pipeline stages, each a driver function over a Dask client: partition, join, update, stats."""
