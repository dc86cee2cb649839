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


def step_row(impl: str, steps: int, first: float, per_call: float, times, params: int, cuda: bool) -> dict:
    """The row of a model-step peer, after its model and optimiser are deleted: the peak memory it used, and on a
    GPU its cached blocks freed, since the JAX rows that follow share the device."""
    import torch
    peak = torch.cuda.max_memory_allocated() if cuda else None
    if cuda:
        torch.cuda.empty_cache()
    return {"impl": impl, "steps_per_s": steps / per_call, "first_call_s": first, "steady_call_s": per_call,
            "call_s": times, "params": params, "peak_bytes": peak}
