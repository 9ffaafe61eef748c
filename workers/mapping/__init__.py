"""The pure mappings: an event in, request *descriptions* out (no I/O, no clock)."""
