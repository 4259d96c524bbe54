"""One adaptive-kernel (EoS) solve with its plots: python adaptive_kernels.py configs/adaptive_kernels.yml"""
import sys

from shallow_collapse.cli import main

if __name__ == "__main__":
    sys.exit(main("adaptive_kernels"))
