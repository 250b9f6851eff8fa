"""Generated gRPC stubs of protos/embedder/v1 (scripts/dev/gen_protos.py)."""
