"""Train one fully-connected network and watch NC1 of its features: python fcn.py configs/fcn.yml"""
import sys

from shallow_collapse.cli import main

if __name__ == "__main__":
    sys.exit(main("fcn"))
