"""Site adapters: how Tide starts, lists and destroys resources at a site.

`tide.sites.base` holds the interface every site speaks (SiteAdapter, its
capabilities) and its errors; each kind of site is a package of its own
(tide.sites.docker, .openstack, .slurm: `config` and `adapter`), registered
in `tide.sites.kinds`. Importing a kind's config loads no client library:
its adapter (docker SDK, openstacksdk, asyncssh) is imported when a site
of the kind is built.
"""
