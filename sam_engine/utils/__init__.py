"""Helpers with no knowledge of SAM: atomic files, CPU worker threads, glibc malloc settings, the
device choice, mask overlays as PNG."""
