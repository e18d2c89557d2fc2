"""The run's figures and the loss zoo (matplotlib, Agg: no display needed). Each function writes one PNG."""
