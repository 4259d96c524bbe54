"""Progress of sweep cells: one bar per sweep, or one bar over a whole study of several sweeps.

A sweep asks :func:`cell_progress` for a callback to call once per finished cell. On its own it
gets a bar of its own; inside :func:`study_progress` (the paper, :mod:`shallow_collapse.paper`)
every sweep advances the study's single bar instead. The study's total starts at every cell of
every planned sweep and drops the cells that need no work (already stored, or written off
because a sweep failed), so the rate and the remaining-time estimate count computed cells only.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

from tqdm import tqdm

__all__ = ["Study", "study_progress", "cell_progress"]


class Study:
    """The bar of a study: ``planned`` maps each sweep to its number of cells."""

    def __init__(self, planned: dict[str, int], desc: str):
        self.left = dict(planned)  # cells of each sweep neither finished nor written off
        self.current: str | None = None
        self.bar = tqdm(total=sum(planned.values()), desc=desc, unit="cell", dynamic_ncols=True)

    def _drop(self, count: int) -> None:
        if count:
            self.bar.total -= count
            self.bar.refresh()

    def start(self, sweep: str, todo: int) -> None:
        """``sweep`` begins with ``todo`` cells to compute; the others are already stored."""
        self.current = sweep
        self._drop(self.left[sweep] - todo)
        self.left[sweep] = todo

    def advance(self) -> None:
        """One cell of the current sweep finished."""
        self.left[self.current] -= 1
        self.bar.update()

    def finish(self, sweep: str) -> None:
        """``sweep`` is over (done, failed or never started): write off its cells still open."""
        self._drop(self.left[sweep])
        self.left[sweep] = 0

    def describe(self, text: str) -> None:
        self.bar.set_description(text)


_STUDY: ContextVar[Study | None] = ContextVar("study", default=None)


@contextmanager
def study_progress(planned: dict[str, int], desc: str = "study") -> Iterator[Study]:
    """Within the block, every sweep advances one bar over the cells of all ``planned`` sweeps."""
    study = Study(planned, desc)
    token = _STUDY.set(study)
    try:
        yield study
    finally:
        _STUDY.reset(token)
        study.bar.close()


@contextmanager
def cell_progress(sweep: str, todo: int) -> Iterator[Callable[[], None]]:
    """A callback to call once per finished cell of ``sweep`` (``todo`` cells to compute)."""
    study = _STUDY.get()
    if study is not None:
        study.start(sweep, todo)
        yield study.advance
        return
    with tqdm(total=todo, desc=sweep, unit="cell", dynamic_ncols=True) as bar:
        yield bar.update
