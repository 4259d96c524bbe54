"""Compare sweeps on the same grid and seed (FCN vs NNGP vs NTK vs AK on identical draws):
python compare.py out/<name>/<hash> [out/<name>/<hash> ...] [--out DIR]"""
import sys

from shallow_collapse.compare import main

if __name__ == "__main__":
    sys.exit(main())
