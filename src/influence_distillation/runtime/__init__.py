"""Run machinery: data and models in, resumable stages, run directories and manifests out."""
