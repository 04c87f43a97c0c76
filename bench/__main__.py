"""``python -m bench``: run every benchmark and print its table."""

from bench import bench_cpu, bench_io, bench_memory

if __name__ == "__main__":
    bench_cpu.main()
    print()
    bench_memory.main()
    print()
    bench_io.main()
