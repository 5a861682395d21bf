"""Exploratory timing scripts of the CPU kernel; their outputs live in results/kernels/."""
