"""Run machinery: the selection pipeline, its resumable shards, run directories and manifests, torchrun, the dry
run's cost model and the warm-up."""
