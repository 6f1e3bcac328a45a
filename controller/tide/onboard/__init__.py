"""`tide onboard`: join one provider host to a pool with one command, with
the provider roles' own defaults and templates (no second copy of either)."""
