"""
SPDF's FLOPs accounting (supplement A.4, Tables 2-3). Per sequence of S tokens:

  six block matrices  2*S*(4*d*d + 2*d*d_ff) * (1 - s)   sparse: scale with density
  attention scores    2*S*S*d + 3*h*S*S + 2*S*S*d        dense (QK^T, softmax, AV)
  LM head             2*S*d*V                            dense, once
  embedding lookups   0

  forward = n_layer * (matrices + attention) + head;  training = 3 * forward

`python flops.py` prints supplement Table 2 (pre-training) and Table 3 (fine-tuning);
`--json` prints the pre-training rows as JSON. pretrain.py and finetune.py use these functions.
"""
import json

from common import parse_config, run_cli
from model import PRESETS

VOCAB = 50257  # the paper's figures use the unpadded GPT-2 vocabulary

# supplement Table 2: 2.5B and 26B pre-training tokens (~20 per parameter) in sequences of 2048
# (the table prints these as 1.22e6 and 1.27e7 sequences; the exact counts reproduce its totals)
PRETRAIN_SEQS = {"gpt2-small": 2.5e9 / 2048, "gpt3-xl": 26e9 / 2048}
# supplement Table 3: fine-tuning sequences per task; its per-sequence figures reproduce with
# sequences of 512 tokens, and its FLOPs/seq column is the forward pass (total = 3 x that x seqs)
FINETUNE_SEQS = {"E2E": 1.26e5, "WebNLG": 0.54e5, "DART": 1.25e5, "Curation Corpus": 0.34e5}
FINETUNE_SEQ_LEN = 512


def forward_flops(cfg, seq_len, sparsity=0.0, vocab=VOCAB):
    """Forward FLOPs for one sequence of seq_len tokens; sparsity scales only the six matrices."""
    d, S, h = cfg.n_embd, seq_len, cfg.n_head
    matrices = 2 * S * (3 * d * d + d * d + 2 * d * 4 * d)  # q,k,v + out proj + MLP in/out
    attention = 2 * S * S * d + 3 * h * S * S + 2 * S * S * d
    head = 2 * S * d * vocab
    return cfg.n_layer * (matrices * (1.0 - sparsity) + attention) + head


def train_flops(cfg, seq_len, sparsity=0.0, vocab=VOCAB):
    """Forward + backward: backward costs twice the forward, sparse matmuls included."""
    return 3 * forward_flops(cfg, seq_len, sparsity, vocab)


def densify_iter(densify_at, max_iters):
    """Variable SPDF's switch: a fraction of max_iters if < 1, else an iteration count; 0 = never."""
    if densify_at <= 0:
        return None
    return round(densify_at * max_iters) if densify_at < 1 else int(densify_at)


def vspdf_train_flops(cfg, seq_len, sparsity, sparse_frac, vocab=VOCAB):
    """Variable SPDF, per sequence on average: sparse_frac of the sequences at `sparsity`, the rest dense."""
    return (sparse_frac * train_flops(cfg, seq_len, sparsity, vocab)
            + (1.0 - sparse_frac) * train_flops(cfg, seq_len, 0.0, vocab))


def num_params(cfg, vocab=VOCAB):
    """Parameters of the GPT in model.py (tied head, learned positions), at the given vocab."""
    d, L = cfg.n_embd, cfg.n_layer
    block = 2 * 2 * d + (4 * d * d + 4 * d) + (8 * d * d + 5 * d)  # 2 LNs, attention, MLP
    return vocab * d + cfg.block_size * d + L * block + 2 * d


def pretrain_rows(models=("gpt2-small", "gpt3-xl"), sparsities=(0.0, 0.5, 0.75)):
    rows = []
    for name in models:
        cfg = PRESETS[name]
        dense = train_flops(cfg, 2048)
        for s in sparsities:
            per_seq = train_flops(cfg, 2048, s)
            rows.append(dict(model=name, sparsity=s, params=num_params(cfg),
                             seqs=PRETRAIN_SEQS[name], flops_per_seq=per_seq, total_flops=per_seq * PRETRAIN_SEQS[name],
                             reduction=dense / per_seq))
    return rows


def finetune_rows(models=("gpt2-small", "gpt3-xl")):
    rows = []
    for task, seqs in FINETUNE_SEQS.items():
        for name in models:
            fwd = forward_flops(PRESETS[name], FINETUNE_SEQ_LEN)  # dense fine-tuning
            rows.append(dict(task=task, model=name, seqs=seqs, forward_flops_per_seq=fwd,
                             total_flops=3 * fwd * seqs))
    return rows


DEFAULTS = dict(json=False)  # --json: print the pre-training rows as JSON


def main(argv):
    cfg, _ = parse_config(DEFAULTS, argv)
    if cfg["json"]:
        print(json.dumps(pretrain_rows(), indent=1))
        return
    print("Pre-training (supplement Table 2): sequences of 2048 tokens, FLOPs/seq = fwd + bwd")
    print(f"{'model':11s} {'sparsity':>8s} {'params':>14s} {'seqs':>8s} {'FLOPs/seq':>10s} "
          f"{'total':>9s} {'exaFLOPs':>9s} {'reduction':>9s}")
    for r in pretrain_rows():
        print(f"{r['model']:11s} {r['sparsity']:8.0%} {r['params']:14,d} "
              f"{r['seqs']:8.3g} {r['flops_per_seq']:10.3g} "
              f"{r['total_flops']:9.3g} {r['total_flops'] / 1e18:9.2f} {r['reduction']:8.2f}x")
    print(f"\nDense fine-tuning (supplement Table 3): sequences of {FINETUNE_SEQ_LEN} tokens, "
          "FLOPs/seq = forward, total = 3 x FLOPs/seq x seqs")
    print(f"{'task':16s} {'model':11s} {'seqs':>8s} {'FLOPs/seq':>10s} {'total':>9s} {'exaFLOPs':>9s}")
    for r in finetune_rows():
        print(f"{r['task']:16s} {r['model']:11s} {r['seqs']:8.3g} {r['forward_flops_per_seq']:10.3g} "
              f"{r['total_flops']:9.3g} {r['total_flops'] / 1e18:9.3f}")


if __name__ == "__main__":
    run_cli(main)
