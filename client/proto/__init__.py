"""Generated gRPC stubs for proto/asr/v1/asr.proto; regenerate with `make proto`."""
