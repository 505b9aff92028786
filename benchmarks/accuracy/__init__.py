"""Agreement measurements: banded stitch vs float64 oracle, int8 vs float32 per ISA.
"""
