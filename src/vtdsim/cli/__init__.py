"""vtdsim.cli."""
