# GPT-2 Small (125M) as in SPDF (supplement A.1): 256 x 2048 tokens per step, peak LR 6e-4,
# 2.5B tokens (4,768 steps), 375M warm-up tokens (716 steps), cosine to 10% of peak.
# On 8 GPUs: torchrun --standalone --nproc_per_node=8 pretrain.py config/pretrain_gpt2_small.py --sparsity=0.75
model = "gpt2-small"
dataset = "pile"
batch_size = 16                   # per process per micro-step; 16 x 16 = 256 sequences per step
gradient_accumulation_steps = 16  # summed over processes: 8 GPUs x 2
learning_rate = 6e-4
max_iters = 4768                  # 2.5e9 / (256 * 2048)
warmup_iters = 716                # 375e6 / (256 * 2048)
eval_interval = 250
eval_iters = 50
out_dir = "out-gpt2-small"
compile = True
