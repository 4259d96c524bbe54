"""Figures. Plot functions read records and tables and write PNGs; they compute no science."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

from ..runs import atomic_file  # noqa: E402

__all__ = ["save_figure"]


def save_figure(fig, path) -> Path:
    """Write ``fig`` to ``path`` (PNG, 110 dpi; atomically, never through a link), creating
    folders, and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path
