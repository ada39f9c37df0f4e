"""Generating text: the shared draw, the torch engine and its fast steps, the NumPy engines (no torch)."""
