"""The openstack site kind: `config` (its configuration model) and `adapter`."""
