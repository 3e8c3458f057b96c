"""Model families, each composed from `flaxformer_lite.layers`."""
