"""The operator commands and process launching: on top of everything (imports app and workers)."""
