# The paper's fine-tuning recipe (SPDF supplement A.2, which follows LoRA's GPT-2 NLG recipe):
# every training example, 5 epochs, AdamW at 1e-4 with 500 warm-up steps, batch 8, then beam 10
# with no-repeat 4-grams over every test input. The paper grid-searches batch and LR per task
# (its best values are not published); per-task label smoothing, dropout and length penalty stay
# finetune.PER_TASK's. On a 2-core CPU this is hours per task: use a GPU.
#   python finetune.py config/finetune_paper.py --task=e2e --init_from=out-gpt2-small
recipe = "paper"
max_epochs = 5
learning_rate = 1e-4
warmup_iters = 500
max_examples = 0
val_examples = 0
beam_size = 10
eval_examples = 0
out_dir = "out-finetune-paper"
