"""Scale out: one job across many engines on Ray, with the same exactly-once output."""
