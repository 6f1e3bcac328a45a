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
SLOT_CONSTRAINT = f"{RESOURCE_ID_ATTR} =!= undefined"
SLOT_PROJECTION = [RESOURCE_ID_ATTR, "SlotType", "State", "Activity"]


@dataclass(frozen=True)
class SlotState:
    """What the collector says about one resource's startd."""

    advertised: bool
    claimed_slots: int
    drained: bool = False  # every slot of its startd is in state "Drained"
    draining: bool = False  # a slot is "Drained" or "Retiring": its startd drains


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
    """Startd ads (anything with .get) -> SlotState per TideResourceId: a resource
    is advertised if any ad names it; its claimed slots are its ads in State
    "Claimed" with an Activity other than "Idle" (the dynamic slots running
    jobs: a claim left idle, e.g. one its schedd could not release while the
    collector was away, runs nothing); it is drained when every ad is in
    State "Drained" (the startd finished a drain: no job left), and draining
    when any ad is Drained or Retiring (a drain under way). An ad that is not
    a ClassAd-like mapping, or names no resource, is skipped."""
    out: dict[str, SlotState] = {}
    for ad in ads:
        get = getattr(ad, "get", None)
        if get is None:
            continue
        rid = get(RESOURCE_ID_ATTR)
        if not isinstance(rid, str) or not rid:
            continue
        state, activity = get("State"), get("Activity")
        claimed = 1 if state == "Claimed" and activity != "Idle" else 0
        drained = state == "Drained"
        draining = drained or activity == "Retiring"
        old = out.get(rid)
        if old is not None:
            claimed += old.claimed_slots
            drained = drained and old.drained
            draining = draining or old.draining
        out[rid] = SlotState(True, claimed, drained, draining)
    return out


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
