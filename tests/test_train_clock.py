"""The train worker's clock: samples/s from the end of the first step, and the share of that time
spent waiting for batches (what bench/train_throughput.py reports as `data wait`)."""

import time

from pipelines.train_loop import ThroughputClock


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
