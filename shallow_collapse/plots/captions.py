"""One line per figure saying what it shows, keyed by file stem (the HTML report's captions).

Exact stems first, then ``fnmatch`` patterns for figures named after a layer. A figure added to a
plot module needs its line here; the report tests check that every figure they see has one.
"""
from __future__ import annotations

from fnmatch import fnmatchcase

from .matched import CAPTIONS as MATCHED_CAPTIONS

__all__ = ["CAPTIONS", "PATTERNS", "caption"]

_BAND = "mean ± std over the ok repeats; a black x marks points with failed repeats"

CAPTIONS = {
    # sweeps (plots/sweep.py); each method's own figure, <method>_nc1, is captioned by method_caption
    "methods_side_by_side": "Every method of the sweep on shared axes: log10 NC1 (top) and relative NC1 "
                            f"(bottom) against d, one curve per N or class-size tuple, {_BAND}.",
    # comparisons (plots/compare.py)
    "compare_nc1": "log10 NC1 against d of FCN, NNGP, NTK and the adaptive kernel on identical draws, "
                   f"one panel per N or class-size tuple, {_BAND}.",
    "compare_rel_nc1": "Relative NC1, log10(NC1 / NC1(X)), against d of FCN, NNGP, NTK and the adaptive "
                       f"kernel on identical draws, one panel per N or class-size tuple, {_BAND}.",
    "compare_nc1_vs_n": "log10 NC1 against the number of samples N of every method on identical draws, one "
                        f"panel per input dimension d (balanced classes), {_BAND}.",
    # the matched study (plots/matched.py)
    **MATCHED_CAPTIONS,
    # one trained network (plots/fcn.py)
    "loss": "Training loss per epoch (mean over batches) and the full-data loss at every probe.",
    "nc1": "log10 NC1 of every layer's pre- and post-activation features by epoch, trace form (left) and "
           "pseudo-inverse form (right); dashed: NC1 of the input data.",
    "predictions": "Predicted class of every sample (ordered by class) at init and after training, "
                   "and the raw network output.",
    "data": "The training data: first three coordinates (or value against index for d = 1), coloured by class.",
    "kernels_heatmaps": "Limiting kernels (NNGP of every layer and the NTK) of the run's data, samples ordered by class.",
    "kernels_spectra": "Eigenvalues of every limiting kernel of the run's data, largest first, log-log.",
    "kernels_nc1": "log10 NC1 of every limiting kernel of the run's data, per layer.",
    # one adaptive-kernel solve (plots/adaptive_kernel.py)
    "data_kernel": "The data kernel X X^T, samples ordered by class.",
    "q_kernels": "The kernel Q at the NNGP limit and at the EoS solution, and their difference.",
    "q_spectra": "Eigenvalues of Q at the NNGP limit and at the solution, and of the data kernel.",
    "sigma": "Sigma at the start (NNGP limit, (sigw2/d) I), at the end, and their difference.",
    "sigma_trace": "Trace of Sigma at every accepted annealing step (GP limit first, h last).",
    "sigma_spectrum": "Eigenvalues of Sigma at the start and at the end.",
    "nc1_per_step": "log10 NC1 of Q (left) and its within- and between-class traces (right) at every "
                    "accepted annealing step; dashed: NC1 of the input data.",
    "fbar_kernel_nc1": "log10 NC1 of the kernel of the GP posterior mean fbar at every accepted annealing step.",
    "mse_per_step": "log10 training MSE of the GP posterior mean fbar at every accepted annealing step.",
    "fbar_per_sample": "GP posterior mean fbar per sample at the GP limit and at the end against the "
                       "targets y, and log10 |y - fbar|.",
    "solver_steps": "Solver record of every attempted continuation step: O(N^3) evaluations (red: not "
                    "converged) and the relative residual of each against rtol.",
    "action_per_step": "The action S(Sigma) and the relative residual max|Sigma - Sigma_new|/max|Sigma| at "
                       "every accepted annealing factor (rtol dashed); the title names the solution kept.",
}

PATTERNS = {
    "spectrum_W*": "Eigenvalues of W^T W for this layer at init and after training: sorted values, "
                   "histogram, and the heatmap of the change.",
}


def method_caption(stem: str) -> str | None:
    """The caption of a sweep's figure of one method, ``<method>_nc1`` (a row of the registry)."""
    from ..methods import ROWS  # the registry imports the experiments, which import the plots

    row = ROWS.get(stem.removesuffix("_nc1")) if stem.endswith("_nc1") else None
    return None if row is None else (f"{row.label}: log10 NC1 (left) and relative NC1 (right) against the input "
                                     f"dimension d, one curve per N or class-size tuple, {_BAND}.")


def caption(stem: str) -> str | None:
    """The caption of the figure ``stem`` (file name without suffix), or None if it has none."""
    if stem in CAPTIONS:
        return CAPTIONS[stem]
    if method_caption(stem) is not None:
        return method_caption(stem)
    return next((text for pattern, text in PATTERNS.items() if fnmatchcase(stem, pattern)), None)
