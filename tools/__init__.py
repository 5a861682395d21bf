"""Tools around the method: the one-command GPU check, the kernel benchmark and profiler, exploratory timing."""
