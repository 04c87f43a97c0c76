"""Benchmarks of vmkit: what simulating the hardware costs, as ratios to raw unicorn.

Run with ``python -m bench`` (``make bench``). Each benchmark measures its own
baseline in the same run and prints ratios, never absolute thresholds
(STYLE.md, "Tests": performance lives here, not in timed assertions).
"""
