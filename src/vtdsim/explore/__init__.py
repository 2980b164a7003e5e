"""vtdsim.explore."""
