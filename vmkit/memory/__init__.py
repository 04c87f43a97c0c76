"""Chapter 2, memory virtualization: physical frames, x86-64 paging, EPT, TLBs.

Models return records of every memory reference a translation makes, in the
real entry formats (Intel SDM Vol. 3A ch. 4, Vol. 3C ch. 28). Notebooks:
course/02_memory/. This chapter builds on vmkit.cpu (ExitReason, the assembler).
"""
