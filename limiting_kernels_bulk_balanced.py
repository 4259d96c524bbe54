"""NNGP and NTK NC1 over the balanced sweep grid: python limiting_kernels_bulk_balanced.py configs/limiting_kernels_bulk_balanced.yml"""
import sys

from shallow_collapse.cli import main

if __name__ == "__main__":
    sys.exit(main("limiting_kernels_bulk_balanced"))
