"""vtdsim.scenario."""
