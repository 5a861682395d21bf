# GPT-3 XL (1.3B) as in SPDF (supplement A.1): 512 x 2048 tokens per step, peak LR 2e-4,
# 26B tokens (24,796 steps), 375M warm-up tokens (358 steps), cosine to 10% of peak.
# On 8 GPUs: torchrun --standalone --nproc_per_node=8 pretrain.py config/pretrain_gpt3_xl.py --sparsity=0.75
model = "gpt3-xl"
dataset = "pile"
batch_size = 8                    # per process per micro-step (fits an 80 GB GPU in bf16)
gradient_accumulation_steps = 64  # summed over processes: 8 GPUs x 8 -> 8 x 64 = 512 sequences
learning_rate = 2e-4
max_iters = 24796                 # 26e9 / (512 * 2048)
warmup_iters = 358                # 375e6 / (512 * 2048)
eval_interval = 500
eval_iters = 50
out_dir = "out-gpt3-xl"
compile = True
