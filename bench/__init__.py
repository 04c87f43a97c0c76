"""Benchmarks of vmkit: what simulating the hardware costs, as ratios to raw unicorn.

Run with ``python -m bench`` (``make bench``). Each benchmark measures its own
baseline in the same run and prints ratios, never absolute thresholds
(STYLE.md, "Tests": performance lives here, not in timed assertions).
"""

import time

REPEAT = 3   # best of REPEAT, to tame noise


def best_of(prepare, repeat: int = REPEAT):
    """Best wall time of ``repeat`` runs, and what the last run returned.

    ``prepare()`` builds everything (assembly, memory, tables) outside the
    timing and returns the run itself, a callable.
    """
    best, result = float("inf"), None
    for _ in range(repeat):
        run = prepare()
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result
