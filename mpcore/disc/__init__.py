"""Training and evaluating flow discriminators on flow caches."""
