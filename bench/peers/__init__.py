"""PyTorch peers of the bench workloads (imported only when torch is installed)."""
import statistics
import time


def timed_calls(run, repeats: int, warmup: int = 0):
    """(first call's result, its seconds, median steady call s, every timed call's s): one call, `warmup`
    untimed calls, then `repeats` timed ones. `run` must synchronise the device itself."""
    t0 = time.perf_counter()
    result = run()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return result, first, statistics.median(times), times
