"""torch.profiler of two GPT-2 Small forward+backward passes (4 x 256 tokens, 2 threads), dense vs csr.

    python results/cpu_training/step_profile.py SPARSITY
"""
import os, sys, torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))  # the repository root
import sparsity as sp, sparse_kernels
from model import GPT, preset_config
torch.set_num_threads(2)
s = float(sys.argv[1]) if len(sys.argv) > 1 else 0.75
cfg = preset_config('gpt2-small', 256)
torch.manual_seed(0)
idx = torch.randint(0, 50257, (4, 256)); tgt = torch.randint(0, 50257, (4, 256))
for kind in ('dense', 'csr'):
    torch.manual_seed(0)
    m = GPT(cfg)
    if kind == 'csr':
        masks = sp.make_masks(m, s, seed=0); sp.apply_masks(m, masks); sparse_kernels.to_sparse_model(m, masks)
    for _ in range(2):
        _, loss = m(idx, tgt); loss.backward(); m.zero_grad(set_to_none=True)
    with torch.profiler.profile() as prof:
        for _ in range(2):
            _, loss = m(idx, tgt); loss.backward(); m.zero_grad(set_to_none=True)
    print('=====', kind, s)
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=18))
