"""A write fence: a restore run started on behalf of a lease holder (an archive run) stops working and
writing as soon as the lease is no longer its own, instead of restoring the rest of its plan.

The caller gives `run(config, fence=check)`: a picklable callable that returns None while the run may go
on and otherwise the reason. The restore's tasks ask it before a block's reads and again before the
block's writes; a refusal turns the block's pending rows into `fenced` error rows (nothing written).

Why the tasks ask the lease itself, not a flag the driver sets: the archive's heartbeat notices a
takeover up to a third of the TTL late and its interrupt reaches the driver later still, while the
lease file says it at once. Why through an actor on the driver's node: the lease may be a local file
that only that node sees (a state folder on the head). A refusal is kept: once refused, always refused.

What is left of the race: a takeover between a block's check and its writes (one block's encode and
write). The archive's commit, a compare-and-swap on the lease and HEAD.json, is what finally keeps a
stale run's results out of the archive's record.
"""

from collections.abc import Callable
from dataclasses import dataclass

FENCE_STAGE = "fence"    # the stage named in a fenced row's error text ("fence: <reason>")
ASK_TIMEOUT_S = 120.0    # a fence that does not answer for this long counts as a refusal


class FenceKeeper:
    """The Ray actor that asks the caller's check (on the driver's node) and keeps its first refusal."""

    def __init__(self, check: Callable[[], str | None]):
        self._check, self._refusal = check, None

    def refusal(self) -> str | None:
        if self._refusal is None:
            try:
                self._refusal = self._check()
            except Exception as err:  # a check that cannot tell must not let a stale run write
                self._refusal = f"the fence check failed: {err!r}"
        return self._refusal


@dataclass(frozen=True)
class Fence:
    """What the tasks carry (in StageSettings): the keeper's handle."""

    keeper: object  # ray.actor.ActorHandle of FenceKeeper

    def refusal(self) -> str | None:
        import ray

        try:
            return ray.get(self.keeper.refusal.remote(), timeout=ASK_TIMEOUT_S)
        except Exception as err:  # the driver's node or the keeper is gone: the run is over anyway
            return f"the fence could not be asked: {type(err).__name__}"


def start_fence(check: Callable[[], str | None]) -> Fence:
    """A FenceKeeper pinned to this (the driver's) node, needing no CPU (the head may have none)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    keeper = ray.remote(FenceKeeper).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote(check)
    return Fence(keeper)
