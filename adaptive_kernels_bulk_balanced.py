"""Adaptive-kernel and NNGP NC1 over the balanced sweep grid: python adaptive_kernels_bulk_balanced.py configs/adaptive_kernels_bulk_balanced.yml"""
import sys

from shallow_collapse.cli import main

if __name__ == "__main__":
    sys.exit(main("adaptive_kernels_bulk_balanced"))
