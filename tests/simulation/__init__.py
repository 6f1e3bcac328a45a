"""A deterministic fault simulator for Tide's controller (FoundationDB-style
simulation testing; see ../../../shared/STYLE.md, "The controller").

The REAL controller (tide.loop.Controller: reconcile, observe, decide, act,
and the real tide.store.Store on a real SQLite file) runs against a
SIMULATED world - an HTCondor pool (collector, schedds, negotiator, startds
that drain, vacate and re-advertise on their own schedule), simulated sites
(docker-like, openstack-like, slurm-backfill-like with owners) - on a
VIRTUAL clock, driven by a schedule of steps and faults drawn from one seed.
Invariants are checked after every step; the first violation stops the
schedule, and `python -m tests.simulation --seed N -v` replays it.

Modules:
- clock:      VirtualClock (with lanes for concurrent sites) and SimRunner
- faults:     SimCrash, DeadlineExceeded and the fault injector
- pool:       the simulated HTCondor pool and today's demand semantics
- sites:      the simulated sites (SiteAdapter implementations)
- world:      the world that ties them together, and its event queue
- harness:    THE seam to the controller: how to build, drive, crash it
- invariants: what must hold after every step
- schedule:   seeded scenarios, the driver of one schedule, and many
"""
