"""`make bench`: the performance figures of SPEC 8, measured on this machine (see README_section.md)."""
