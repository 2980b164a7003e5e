"""vtdsim: an executable, bit-exact model of the Intel VT-d IOMMU in scalable mode."""

__version__ = "0.1.0"
