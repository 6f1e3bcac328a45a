"""The pool adapter: everything Tide says to HTCondor, and nothing else does.

- `client`: the bindings' private configuration (the collector, the
  controller's token, IDTOKENS only), set up before htcondor2 is imported;
- `demand`: the schedds' idle autoclusters matched against each site's
  machine prototype, with a per-schedd completeness verdict;
- `slots`: the collector's slot ads of Tide's workers, and withdrawing the
  ads of a destroyed one;
- `startds`: telling a worker's startd to drain (through its own site's
  channel: execute nodes trust no remote token, see that module);
- `tokens`: minting each worker's own IDTOKEN from the workers' signing
  key (pure: no binding).

The bindings (htcondor2, classad2) are imported by these modules only, and
lazily where the daemon may still have to configure them; the loop, the
policy and the actuator speak to the Protocols here (Slots, Startds) and
import no binding.
"""
