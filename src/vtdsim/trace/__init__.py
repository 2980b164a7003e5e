"""vtdsim.trace."""
