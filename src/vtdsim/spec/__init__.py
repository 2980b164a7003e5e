"""vtdsim.spec."""
