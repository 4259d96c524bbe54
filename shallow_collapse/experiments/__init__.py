"""One module per method: the glue between the numerics, run folders, sweeps and plots."""
