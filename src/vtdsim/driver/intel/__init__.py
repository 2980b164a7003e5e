"""vtdsim.driver.intel."""
