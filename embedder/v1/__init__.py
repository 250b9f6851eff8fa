"""Generated gRPC stubs of protos/embedder/v1 (scripts/gen_protos.py)."""
