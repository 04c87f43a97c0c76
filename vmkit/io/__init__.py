"""Chapter 3, I/O virtualization (being built): Xen split drivers, virtio, the IOMMU.

So far, the protocols as data, faithful to their headers: ``ring.py`` (the Xen
shared ring, io/ring.h), ``grants.py`` (grant tables v1), ``evtchn.py`` (event
channels), ``xenstore.py`` (the store and the XenBus states), ``virtqueue.py``
(virtio's split virtqueue), ``iommu.py`` (VT-d DMA remapping, SR-IOV) and
``typology.py`` (the slides' five device kinds with real examples); and
``emulated.py``, I/O trapped at the instruction under the chapter-1 hypervisor.
Notebooks in course/03_io/ (01_peripheriques_emulation so far). Builds on vmkit.cpu and vmkit.memory.
"""
