"""vtdsim.driver."""
