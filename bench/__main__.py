"""``python -m bench``: run every benchmark and print its table."""

from bench import bench_cpu

if __name__ == "__main__":
    bench_cpu.main()
