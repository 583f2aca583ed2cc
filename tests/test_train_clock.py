"""The train worker's clock: samples/s from the end of the first step, and the share of that time
spent waiting for batches (what bench/train_throughput.py reports as `data wait`)."""

import threading
import time

import pytest

from pipelines.train.loop import ThroughputClock, thread_schedstat


def test_clock_splits_waiting_for_batches_from_stepping():
    clock = ThroughputClock(samples_per_step=4)
    for step in range(5):
        if step:
            clock.asking()
            time.sleep(0.03)      # the iterator producing the next batch
        clock.fetched()
        time.sleep(0.09)          # the step itself
        clock.tick()
    # The first step and the wait before it are not timed: 4 steps of 0.12 s, 0.03 s of each waiting.
    assert 0.1 <= clock.data_wait_fraction <= 0.45  # 0.25, plus room for late wake-ups on a busy machine
    assert 4 * 4 / 0.5 / 3 <= clock.samples_per_s <= 4 * 4 / 0.48


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.skipif(thread_schedstat() is None, reason="needs Linux's per-thread schedstat")
def test_clock_counts_the_ticking_threads_cpu_time_not_the_process():
    """A computing step is all on-CPU or waiting-for-CPU time; a step asleep while another thread of
    the same process computes (the main thread, a prefetch thread) is neither: the split is the
    ticking thread's own."""
    busy = ThroughputClock(samples_per_step=4)
    for _ in range(4):
        spin(0.05)
        busy.tick()
    busy_split = busy.cpu_fractions()
    assert busy_split["on_cpu_fraction"] + busy_split["runnable_fraction"] >= 0.8

    # The training thread is not the main thread under Ray Train; here the main thread is the busy one.
    splits = {}

    def sleeping_steps():
        asleep = ThroughputClock(samples_per_step=4)
        asleep.tick()
        for _ in range(3):
            time.sleep(0.1)
            asleep.tick()
        splits.update(asleep.cpu_fractions())

    training = threading.Thread(target=sleeping_steps)
    training.start()
    spin(0.4)
    training.join()
    assert splits["on_cpu_fraction"] + splits["runnable_fraction"] <= 0.3
