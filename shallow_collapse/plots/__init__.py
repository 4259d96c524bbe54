"""Figures. Plot functions read records and tables and write figures; they compute no science.

Every figure goes through :func:`save_figure`, which writes it in each format of the active
:func:`figure_formats` (``png`` unless a run's ``plot_formats`` says otherwise). Each plot module
keeps a ``CAPTIONS`` table (file stem -> one line saying what the figure shows) that the HTML
report (:mod:`shallow_collapse.report`) prints under the figure.
"""
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

from ..runs import atomic_file  # noqa: E402

__all__ = ["save_figure", "figure_formats"]

_FORMATS: ContextVar[tuple] = ContextVar("plot_formats", default=("png",))


@contextmanager
def figure_formats(formats):
    """Within the block, :func:`save_figure` writes every figure in each of ``formats``
    (e.g. ``["pdf", "svg"]``), in that order."""
    token = _FORMATS.set(tuple(dict.fromkeys(formats)))
    try:
        yield
    finally:
        _FORMATS.reset(token)


def save_figure(fig, path) -> Path:
    """Write ``fig`` as ``path`` with the suffix of each active format (110 dpi for bitmaps;
    atomically, never through a link), creating folders, and close it. Returns the file of the
    first format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = [path.with_suffix("." + fmt) for fmt in _FORMATS.get()]
    try:
        for target in written:
            with atomic_file(target) as tmp:
                fig.savefig(tmp, dpi=110, format=target.suffix.lstrip("."))
    finally:
        plt.close(fig)
    return written[0]
