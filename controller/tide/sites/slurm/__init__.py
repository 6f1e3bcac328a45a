"""The slurm site kind: `config` (its configuration model) and `adapter`."""
