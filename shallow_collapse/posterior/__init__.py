"""The posterior network the EoS describe, with its readout integrated out (docs/POSTERIOR.md).

- :mod:`.target`: the collapsed potential U(v) over the whitened first layer (autograd gradient);
- :mod:`.steps`: exact Metropolis-Hastings steps (MALA, pCN-Langevin);
- :mod:`.chains`: the batched chain driver (burn-in adaptation, frozen sampling) and its recorder;
- :mod:`.diagnostics`: split R-hat, effective sample size, ratio estimates with standard errors;
- :mod:`.sample`: :func:`sample_posterior`, one :class:`PosteriorResult` per draw.
"""
from .sample import PosteriorResult, sample_posterior
from .target import CollapsedPosterior

__all__ = ["CollapsedPosterior", "PosteriorResult", "sample_posterior"]
