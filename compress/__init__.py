"""Compression of trained runs: magnitude pruning (prune.py), int8 quantization (quantize.py,
fake_quant.py), the NumPy integer runner (int8.py) and the file format they share (sparse.py).
"""
