"""vtdsim.hw."""
