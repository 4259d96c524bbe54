"""Adaptive-kernel and NNGP NC1 over the imbalanced sweep grid (N=2048): python adaptive_kernels_bulk_imbalanced.py configs/adaptive_kernels_bulk_imbalanced.yml"""
import sys

from shallow_collapse.cli import main

if __name__ == "__main__":
    sys.exit(main("adaptive_kernels_bulk_imbalanced"))
