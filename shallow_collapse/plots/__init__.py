"""Figures. Plot functions read records and tables and write PNGs; they compute no science."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

__all__ = ["save_figure"]


def save_figure(fig, path) -> Path:
    """Write ``fig`` to ``path`` (PNG, 110 dpi), creating folders, and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
