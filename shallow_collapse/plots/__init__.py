"""Figures. Plot functions read records and tables and write PNGs; they compute no science."""
import matplotlib

matplotlib.use("Agg")
