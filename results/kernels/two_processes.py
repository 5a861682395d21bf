"""
One thread of dense x @ W.T and of the CSR kernel, best of 9, twice; run it alone, then as two
processes at once, to see whether two busy cores slow each other down (shared cache, memory):

    python results/kernels/two_processes.py 3072 768 0.75 solo
    python results/kernels/two_processes.py 3072 768 0.75 A & python results/kernels/two_processes.py 3072 768 0.75 B; wait
"""
