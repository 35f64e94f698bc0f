"""Tools beside the daemon: the demo and the benchmark (the only modules that import both
the daemon and the sandbox)."""
