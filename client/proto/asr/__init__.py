"""Deprecated alias of `asr_grpc`; see client/proto/__init__.py."""
