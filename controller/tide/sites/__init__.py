"""Site adapters: how Tide starts, lists and destroys resources at a site.

`tide.sites.base` holds the interface every site speaks (SiteAdapter) and its
errors; each kind of site has its own module (openstack), which this package
does not import: importing tide.sites loads no cloud client library.
"""
