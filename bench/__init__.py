"""Load generators and benchmarks for the DNI broker (kept out of tests/)."""
