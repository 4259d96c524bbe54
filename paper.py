"""The whole study: the six bulk sweeps and both comparisons, one report: python paper.py configs/paper.yml"""
import sys

from shallow_collapse.paper import main

if __name__ == "__main__":
    sys.exit(main())
