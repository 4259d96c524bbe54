"""NNGP and NTK NC1 over the imbalanced sweep grid: python limiting_kernels_bulk_imbalanced.py configs/limiting_kernels_bulk_imbalanced.yml"""
import sys

from shallow_collapse.cli import main

if __name__ == "__main__":
    sys.exit(main("limiting_kernels_bulk_imbalanced"))
