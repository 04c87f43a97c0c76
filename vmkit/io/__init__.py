"""I/O virtualization: device types, Xen split drivers and rings, the IOMMU. Placeholder, filled by chapter 03_io (course/03_io/)."""
