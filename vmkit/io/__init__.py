"""Chapter 3, I/O virtualization (being built): Xen split drivers, emulated devices, the IOMMU.

So far: ``ring.py``, the Xen shared ring of xen/include/public/io/ring.h. Notebooks
will be in course/03_io/. This chapter builds on vmkit.cpu and vmkit.memory.
"""
