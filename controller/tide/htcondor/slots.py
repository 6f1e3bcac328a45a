"""What the pool's collector says about Tide's startds, and taking a gone
machine's ads out of it: the slot half of the controller's HTCondor
adapter (the demand half is tide.htcondor.demand).

htcondor2 is imported lazily, so the daemon can point CONDOR_CONFIG at its
own configuration first (tide.htcondor.client.configure).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

RESOURCE_ID_ATTR = "TideResourceId"
END_TIME_ATTR = "TideEndTime"
"""When the resource's site will end it (epoch seconds): a Slurm pilot's walltime."""
SLOT_CONSTRAINT = f"{RESOURCE_ID_ATTR} =!= undefined"
SLOT_PROJECTION = [
    RESOURCE_ID_ATTR,
    "SlotType",
    "State",
    "Activity",
    "PslotRollupInformation",
    "ChildState",
    "ChildActivity",
    END_TIME_ATTR,
]


@dataclass(frozen=True)
class SlotState:
    """What the collector says about one resource's startd."""

    advertised: bool
    claimed_slots: int
    drained: bool = False  # every slot of its startd is in state "Drained"
    draining: bool = False  # a slot is "Drained" or "Retiring": its startd drains
    ends_at: float | None = None  # its advertised end (TideEndTime), the earliest of its ads


class Slots(Protocol):
    """Observes the pool's slots. Raises if the pool cannot be asked."""

    def observe(self) -> Mapping[str, SlotState]:
        """Slot state by TideResourceId, for every resource with an ad."""
        ...

    def withdraw(self, resource_id: str) -> None:
        """Remove a destroyed resource's startd ads from the collector: a
        machine powered off hard (a deleted server) never withdraws them, and
        until they expire the negotiator matches jobs to a machine that is gone."""
        ...


class CollectorAge(Protocol):
    """A Slots observer that also says when its collector started (optional)."""

    def started_at(self) -> float | None: ...


def slots_from_ads(ads: Any) -> dict[str, SlotState]:
    """Startd ads (anything with .get) -> SlotState per TideResourceId.

    A resource is advertised if any ad names it. Its claimed slots are the
    slots in State "Claimed" with an Activity other than "Idle" (running
    jobs: a claim left idle, e.g. one its schedd could not release while the
    collector was away, runs nothing), counted twice over: from its dynamic
    slots' own ads, and from its partitionable slot's roll-up of its children
    (ChildState/ChildActivity, which the startd sends in the partitionable
    slot's own ad); the larger count holds. So a dynamic slot's ad that went
    missing (an invalidation, a lost update) never makes a busy machine look
    idle while its partitionable slot's ad still says the job runs.

    It is drained when every ad is in State "Drained" and no partitionable
    slot still has a child (the startd finished a drain: no job left), and
    draining when any ad or child is Drained or Retiring (a drain under way).
    It ends at the earliest TideEndTime its ads give (a number; none: no end).
    An ad that is not a ClassAd-like mapping, or names no resource, is skipped."""
    tallies: dict[str, _Tally] = {}
    for ad in ads:
        get = getattr(ad, "get", None)
        if get is None:
            continue
        rid = get(RESOURCE_ID_ATTR)
        if not isinstance(rid, str) or not rid:
            continue
        t = tallies.setdefault(rid, _Tally())
        state, activity = get("State"), get("Activity")
        if get("SlotType") == "Partitionable" and get("PslotRollupInformation") is True:
            children = list(
                zip(_strings(get("ChildState")), _strings(get("ChildActivity")), strict=False)
            )
            t.rollup_claimed += sum(1 for cs, ca in children if cs == "Claimed" and ca != "Idle")
            t.children += len(children)
            t.draining = t.draining or any(
                cs == "Drained" or ca == "Retiring" for cs, ca in children
            )
        else:
            t.claimed += 1 if state == "Claimed" and activity != "Idle" else 0
        t.drained = t.drained and state == "Drained"
        end = get(END_TIME_ATTR)
        if isinstance(end, int | float) and not isinstance(end, bool):
            t.ends_at = float(end) if t.ends_at is None else min(t.ends_at, float(end))
        t.draining = t.draining or state == "Drained" or activity == "Retiring"
    return {
        rid: SlotState(
            True,
            max(t.claimed, t.rollup_claimed),
            t.drained and t.children == 0,
            t.draining,
            t.ends_at,
        )
        for rid, t in tallies.items()
    }


@dataclass
class _Tally:
    claimed: int = 0  # from dynamic (and static) slots' own ads
    rollup_claimed: int = 0  # from partitionable slots' roll-up of their children
    children: int = 0  # dynamic slots the partitionable slots say they have
    drained: bool = True
    draining: bool = False
    ends_at: float | None = None


def _strings(value: Any) -> list[str]:
    """A ClassAd list attribute as strings ([] if it is missing or not a list)."""
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        return []
    return [v if isinstance(v, str) else "" for v in value]


class CollectorSlots:
    """Slots as the pool's collector reports them."""

    def __init__(self, collector: str) -> None:
        import htcondor2  # noqa: PLC0415

        self._htcondor = htcondor2
        self._collector = htcondor2.Collector(collector)

    def observe(self) -> Mapping[str, SlotState]:
        ads = self._collector.query(
            self._htcondor.AdTypes.Startd,
            constraint=SLOT_CONSTRAINT,
            projection=list(SLOT_PROJECTION),
        )
        return slots_from_ads(ads)

    def started_at(self) -> float | None:
        """When the collector started (its DaemonStartTime), None if it does not say."""
        ads = self._collector.query(
            self._htcondor.AdTypes.Collector, projection=["DaemonStartTime"]
        )
        for ad in ads:
            started = ad.get("DaemonStartTime")
            if isinstance(started, int | float) and not isinstance(started, bool):
                return float(started)
        return None

    def withdraw(self, resource_id: str) -> None:
        import classad2  # noqa: PLC0415

        query = classad2.ClassAd()
        query["MyType"] = "Query"
        query["TargetType"] = "Machine"
        query["Requirements"] = classad2.ExprTree(
            f"{RESOURCE_ID_ATTR} == {classad2.quote(resource_id)}"
        )
        self._collector.advertise([query], "INVALIDATE_STARTD_ADS")
