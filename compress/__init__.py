"""Compression of trained runs: magnitude pruning (prune.py) and its file format (sparse.py)."""
