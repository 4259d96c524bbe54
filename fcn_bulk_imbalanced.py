"""NC1 of trained networks (with the NNGP and NTK of the same draws) over the imbalanced sweep grid: python fcn_bulk_imbalanced.py configs/fcn_bulk_imbalanced.yml"""
import sys

from shallow_collapse.cli import main

if __name__ == "__main__":
    sys.exit(main("fcn_bulk_imbalanced"))
