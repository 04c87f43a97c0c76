"""vmkit: the library behind the course on virtual machines and containers.

One subpackage per chapter (cpu, memory, io, containers, swarm), a small shared
``core`` and ``viz``, which alone draws. Importing vmkit runs nothing.
"""

__version__ = "0.1.0"
