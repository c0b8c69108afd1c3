"""Serving: TF Serving SavedModel exports (signatures, warmup, versions) and a TF-Serving-API compatible server."""
