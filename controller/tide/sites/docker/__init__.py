"""The docker site kind: `config` (its configuration model) and `adapter`."""
