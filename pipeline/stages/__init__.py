"""The pipeline stages, each a driver function over a Dask client: partition, join, update, stats."""

# What a worker imports for any stage's tasks: the LocalCluster's fork server imports them once for every worker
# (cluster/forkserver.py), and `tasks.warm_up` on workers that were started otherwise.
WORKER_MODULES = ("pipeline.stages.partition", "pipeline.stages.join", "pipeline.stages.maintain")
