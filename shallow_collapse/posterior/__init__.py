"""The posterior network the EoS describe, with its readout integrated out (docs/POSTERIOR.md).

- :mod:`.gibbs`: the sampler, collapsed Gibbs over neurons by elliptical slice sampling
  (``init`` and ``sweep``), with a scale move for positively homogeneous activations;
- :mod:`.chains`: the chain driver (cache-sized chain groups) and its recorder;
- :mod:`.diagnostics`: rank-normalised R-hat, bulk and tail ESS, Monte Carlo SE (arviz-stats),
  traces saved as netCDF files ArviZ opens;
- :mod:`.exact`: the exact posterior of the ReLU family at d = 1 (the samplers' reference);
- :mod:`.sample`: :func:`sample_posterior`, one :class:`PosteriorResult` per draw.
"""
from .gibbs import GibbsTarget
from .sample import PosteriorResult, sample_posterior

__all__ = ["GibbsTarget", "PosteriorResult", "sample_posterior"]
