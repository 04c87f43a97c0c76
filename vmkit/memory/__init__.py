"""Memory virtualization: page tables, the TLB, EPT (SLAT). Placeholder, filled by chapter 02_memory (course/02_memory/)."""
