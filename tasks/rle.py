"""``steelqc.tasks.rle``: the RLE codec at its documented import path; it lives in ``tasks/data/rle.py``."""

from steelqc.tasks.data.rle import RLEError, parse_runs, rle_decode, rle_encode

__all__ = ["RLEError", "parse_runs", "rle_decode", "rle_encode"]
