"""From what the pool and the sites answered to the Snapshot the policy
decides on: evidence, not assumption. Pure functions: no I/O, no clock.

A record's state follows what is seen (`evidence`):

* a resource whose slot is advertised is RUNNING, whatever the store says
  (a create that crashed or missed its deadline, an adopted orphan);
* a REQUESTED resource its site lists is BOOTING (its create happened);
* a resource its site no longer lists is GONE, except a boot younger than
  the listing grace (a cloud's listing may lag behind its create call);
  so is one of which the site lists only a record (`Owned.ended`: a Slurm
  pilot that has ended), except a boot that ended failed: a failed boot;
* a resource its site lists as this controller's that the store does not
  know (a lost state file) is an orphan, adopted in the state it is in;
  only one that never registered may then be destroyed at once.

The loop's own timers follow the slots, and only while the collector
answers: `idle_since` (no claimed slot since), `lost_since` (no ad since).
While the collector cannot be seen every timer stays as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from tide.htcondor.slots import SlotState
from tide.model import Orphan, Owners, Resource, State
from tide.sites.base import Owned, OwnerQueue
from tide.store import EVACUATE_ALL, SiteRecord

_BOOTS = frozenset({State.REQUESTED, State.BOOTING})
_LIVE = frozenset({State.RUNNING, State.DRAINING})
_UNSEEN = SlotState(advertised=False, claimed_slots=0)
STARTD_UPDATE_S = 60.0
"""An ad older than a startd's update may lag (Tide's workers update every
30 s): a RUNNING record this young whose ad still says "draining" is an
undrain the collector has not heard of yet."""


@dataclass(frozen=True)
class Answers:
    """What this cycle's calls answered; None where a call gave no answer."""

    slots: Mapping[str, SlotState] | None  # None: the collector did not answer
    listings: Mapping[str, Sequence[Owned]] = field(default_factory=dict)  # sites that answered
    slots_complete: bool = True  # False: a young collector; a missing ad proves nothing


@dataclass(frozen=True)
class Move:
    resource: str
    site: str
    to: State
    reason: str


@dataclass(frozen=True)
class Evidence:
    """The records as the evidence has them, and what to write for that."""

    resources: tuple[Resource, ...]
    moves: tuple[Move, ...]
    adopt: tuple[tuple[Orphan, State], ...]
    timers: Mapping[str, Mapping[str, float | None]]


def evidence(
    records: Sequence[Resource], answers: Answers, now: float, listing_grace_s: float
) -> Evidence:
    """Each record with what was seen about it; the moves, adoptions and timer
    changes that the store must record for that."""
    slots = answers.slots
    listed_by_site = {
        site: {o.resource_id: o for o in owned} for site, owned in answers.listings.items()
    }
    resources: list[Resource] = []
    moves: list[Move] = []
    timers: dict[str, dict[str, float | None]] = {}
    known: set[str] = set()
    for record in records:
        known.add(record.id)
        listing = listed_by_site.get(record.site)
        owned = None if listing is None else listing.get(record.id)
        if owned is not None and owned.ended and not (owned.failed and record.state in _BOOTS):
            owned = None  # only a record of it is left at its site: gone, as if unlisted
        young = record.state in _BOOTS and now - record.state_since < listing_grace_s
        if listing is not None and owned is None and not young:
            moves.append(
                Move(record.id, record.site, State.GONE, "vanished: the site no longer lists it")
            )
            continue
        slot = _UNSEEN if slots is None else slots.get(record.id, _UNSEEN)
        r = _promoted(record, slot, owned, now, moves)
        clocks: dict[str, float | None] = {}
        if slots is not None and r.state in _LIVE and (answers.slots_complete or slot.advertised):
            clocks = _clocks(r, slot, now)
            if clocks:
                timers[r.id] = clocks
        resources.append(_seen(r, slot, owned, listing is not None, clocks))
    adopt: list[tuple[Orphan, State]] = []
    for site, listing in sorted(listed_by_site.items()):
        for rid, owned in sorted(listing.items()):
            if rid in known or owned.ended:
                continue  # known; or only a record of it is left: nothing to adopt
            slot = _UNSEEN if slots is None else slots.get(rid, _UNSEEN)
            orphan = Orphan(rid, site, tuple(sorted(owned.details.items())), slot.advertised)
            state = (
                State.RUNNING
                if slot.advertised
                else State.FAILED
                if owned.failed
                else State.BOOTING
            )
            adopt.append((orphan, state))
            resources.append(_seen(Resource(rid, site, state, now, now), slot, owned, listing=True))
    return Evidence(tuple(resources), tuple(moves), tuple(adopt), timers)


def _promoted(
    r: Resource, slot: SlotState, owned: Owned | None, now: float, moves: list[Move]
) -> Resource:
    if slot.advertised and r.state in (State.REQUESTED, State.BOOTING, State.FAILED):
        moves.append(Move(r.id, r.site, State.RUNNING, "slot advertised"))
        return replace(r, state=State.RUNNING, state_since=now, idle_since=None, lost_since=None)
    if (
        r.state is State.STOPPING
        # its site never took the destroy, or took it and still lists it past
        # the recheck (a pilot told to go before a late create submitted it)
        and (r.destroy_failures > 0 or r.destroy_due is None or now >= r.destroy_due)
        and slot.advertised
        and slot.claimed_slots > 0
        and not slot.drained
    ):  # its destroy failed and it runs jobs now (a create that went on after its deadline)
        moves.append(
            Move(
                r.id, r.site, State.DRAINING, "its destroy failed and jobs run there: drained first"
            )
        )
        return replace(r, state=State.DRAINING, state_since=now, drain_request=None)
    if (
        r.state is State.RUNNING
        and slot.draining
        and now - r.state_since >= STARTD_UPDATE_S
        and r.drain_request is None
    ):  # its startd drains, asked by no record of ours (a lost state file): say so
        moves.append(Move(r.id, r.site, State.DRAINING, "its startd drains"))
        return replace(r, state=State.DRAINING, state_since=now)
    if r.state is State.REQUESTED and owned is not None:
        moves.append(Move(r.id, r.site, State.BOOTING, "listed by its site"))
        return replace(r, state=State.BOOTING, state_since=now)
    return r


def _seen(
    r: Resource,
    slot: SlotState,
    owned: Owned | None,
    listing: bool,
    clocks: Mapping[str, float | None] | None = None,
) -> Resource:
    """The record with what this cycle saw (and its changed `clocks`): one copy."""
    return replace(
        r,
        advertised=slot.advertised,
        claimed_slots=slot.claimed_slots,
        drained=slot.drained,
        draining=slot.draining,
        ends_at=slot.ends_at,
        boot_failed=owned is not None and owned.failed,
        placed=owned is None or owned.placed,
        started_at=None if owned is None else owned.started_at,
        listed=(owned is not None) if listing else None,
        **(clocks or {}),  # type: ignore[arg-type]
    )


def _clocks(r: Resource, slot: SlotState, now: float) -> dict[str, float | None]:
    """idle_since and lost_since after this observation: those that change."""
    idle_since, lost_since = r.idle_since, r.lost_since
    if slot.advertised:
        lost_since = None
        idle_since = None if slot.claimed_slots > 0 else (idle_since or now)
    elif lost_since is None:
        lost_since = now
    changed: dict[str, float | None] = {}
    if idle_since != r.idle_since:
        changed["idle_since"] = idle_since
    if lost_since != r.lost_since:
        changed["lost_since"] = lost_since
    return changed


def owners(
    record: SiteRecord,
    queue: OwnerQueue | None,
    alive: int,
    now: float,
    first_seen: Mapping[str, float] | None = None,
) -> Owners:
    """A backfill site's owners: their queue (None: it could not be read, and
    they count as waiting now: boots resume only `owner_quiet_s` after their
    queue was last seen quiet), when they last waited and when each waiting
    job was first seen waiting (`first_seen`, persisted; a job not in it is
    seen first now), and the operator's standing requests."""
    evacuate = 0
    if record.evacuate == EVACUATE_ALL:
        evacuate = alive
    elif record.evacuate is not None:
        evacuate = max(0, record.evacuate)
    if queue is None:  # unknown: they may be waiting now (the quiet time starts again)
        return Owners(
            known=False,
            last_waiting_at=now,
            paused=record.paused,
            evacuate_nodes=evacuate,
        )
    waiting = queue.pending_nodes + queue.new_nodes > 0
    seen = first_seen or {}
    return Owners(
        pending_nodes=queue.pending_nodes,
        new_nodes=queue.new_nodes,
        free_nodes=queue.free_nodes,
        waiting={job: (nodes, seen.get(job, now)) for job, nodes in queue.waiting.items()},
        last_waiting_at=now if waiting else record.owners_waiting_at,
        paused=record.paused,
        evacuate_nodes=evacuate,
    )
