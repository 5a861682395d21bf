"""
Batched beam search with the KV cache, as the LoRA NLG pipeline decodes (gpt2_beam.py, itself
after Hugging Face / fairseq):

- a batch of inputs x beam_size hypotheses runs as one (B*K) batch; the KV caches are reordered
  with index_select whenever beams are re-ranked;
- a hypothesis ending in <|endoftext|> is finished with score sum(log p) / length**length_penalty
  (length = generated tokens, EOS included); the best finished one is returned;
- no n-gram of the generated tokens may repeat (fairseq's no_repeat_ngram_size);
- an input stops when it has beam_size finished hypotheses and no live one can still beat the
  worst of them (Hugging Face's rule), or at max_new_tokens / the model's block_size;
- beam_size=1 is greedy decoding.

The model has no padding mask, so every prompt in one call must have the same length:
decode_groups batches test inputs of equal prompt length.
"""
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import autocast
from data.sources import EOT
from data.tasks import encode_prompt


def banned_tokens(generated, n):
    """Tokens that would complete an n-gram already present in `generated` (a list of ids)."""
    if n <= 0 or len(generated) < n - 1:
        return []
    prefix = tuple(generated[len(generated) - n + 1:]) if n > 1 else ()
    return [generated[i + n - 1] for i in range(len(generated) - n + 1)
            if tuple(generated[i:i + n - 1]) == prefix]


@torch.no_grad()
def beam_search(model, prompts, beam_size=10, max_new_tokens=64, length_penalty=1.0,
                no_repeat_ngram=4, eos=EOT, soft_prompt=None):
    """prompts: list of equal-length token lists. Returns one token list per prompt (no EOS).
    soft_prompt (N, n_embd): learned vectors put before every prompt (finetune.py --soft_prompt)."""
    assert prompts and len({len(p) for p in prompts}) == 1, "prompts must share one length"
    device = next(model.parameters()).device
    N = 0 if soft_prompt is None else soft_prompt.size(0)  # positions the soft prompt occupies
    B, K, T0 = len(prompts), beam_size, N + len(prompts[0])
    max_new = min(max_new_tokens, model.config.block_size - T0)
    assert max_new >= 1, "prompt fills the whole block_size"
    idx = torch.tensor(prompts, device=device).repeat_interleave(K, dim=0)  # (B*K, T0 - N)
    caches = model.new_kv_caches()
    extra = {} if soft_prompt is None else dict(prefix_embeds=soft_prompt[None])
    logits = model(idx, kv_caches=caches, **extra)[0][:, -1].float()
    # all K beams of an input start identical: only the first is live, so step 1 yields K distinct ones
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0
    history = [[] for _ in range(B * K)]  # generated tokens per row
    finished = [[] for _ in range(B)]  # (normalized score, tokens), best first, at most K
    done = [False] * B
    n_cand = 2 * K if K > 1 else 1  # room for K live ones even if K candidates end in EOS

    for step in range(max_new):
        logp = F.log_softmax(logits, dim=-1)
        if no_repeat_ngram > 0 and step + 1 >= no_repeat_ngram:
            for row, hist in enumerate(history):
                ban = banned_tokens(hist, no_repeat_ngram)
                if ban:
                    logp[row, ban] = float("-inf")
        vocab = logp.size(-1)
        cand = (scores.view(-1, 1) + logp).view(B, K * vocab)
        top_scores, top_ids = cand.topk(n_cand, dim=1)
        top_scores, top_ids = top_scores.tolist(), top_ids.tolist()
        new_scores = torch.full((B, K), float("-inf"), device=device)
        src = torch.arange(B * K, device=device).view(B, K)  # dead slots keep their own row
        new_tok = torch.full((B, K), eos, dtype=torch.long, device=device)
        length = step + 1
        for b in range(B):
            if done[b]:
                continue
            live = 0
            for rank, (s, i) in enumerate(zip(top_scores[b], top_ids[b])):
                if s == float("-inf") or live == K:
                    break
                row, tok = b * K + i // vocab, i % vocab
                if tok == eos:
                    if rank < K:  # an EOS outside the top K is not a finished hypothesis
                        finished[b].append((s / length ** length_penalty, history[row]))
                        finished[b] = sorted(finished[b], key=lambda f: -f[0])[:K]
                    continue
                new_scores[b, live], src[b, live], new_tok[b, live] = s, row, tok
                live += 1
            best_live = max((s for s in new_scores[b].tolist()), default=float("-inf"))
            if live == 0 or (len(finished[b]) >= K and
                             (K == 1 or best_live / length ** length_penalty <= finished[b][-1][0])):
                done[b] = True
                new_scores[b] = float("-inf")
        if all(done):
            break
        order = src.view(-1)
        history = [history[r] + [t] for r, t in zip(order.tolist(), new_tok.view(-1).tolist())]
        for cache in caches:
            cache[0], cache[1] = cache[0].index_select(0, order), cache[1].index_select(0, order)
        scores = new_scores
        if step + 1 == max_new:
            break
        logits = model(new_tok.view(-1, 1), kv_caches=caches, pos_offset=T0 + step)[0][:, -1].float()

    results = []
    for b in range(B):
        pool = list(finished[b])
        if not done[b]:  # out of room: live hypotheses compete with the finished ones
            for k in range(K):
                s = scores[b, k].item()
                if s > float("-inf"):
                    hist = history[b * K + k]
                    pool.append((s / max(1, len(hist)) ** length_penalty, hist))
        results.append(max(pool, key=lambda f: f[0])[1] if pool else [])
    return results


def decode_groups(cfg, model, enc, groups, device, soft_prompt=None):
    """Beam-search every group's context; inputs of equal prompt length share a batch."""
    model.eval()
    room = model.config.block_size - (0 if soft_prompt is None else soft_prompt.size(0))
    prompts = [encode_prompt(enc, g["context"], room) for g in groups]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    chunks, chunk = [], []
    for i in order:
        if chunk and (len(prompts[i]) != len(prompts[chunk[0]]) or len(chunk) == cfg["decode_batch"]):
            chunks.append(chunk)
            chunk = []
        chunk.append(i)
    chunks.append(chunk)
    outputs = [None] * len(groups)
    for chunk in tqdm(chunks, desc=f"beam search (beam {cfg['beam_size']})", dynamic_ncols=True):
        with autocast(device):
            tokens = beam_search(model, [prompts[i] for i in chunk], cfg["beam_size"], cfg["max_new_tokens"],
                                 cfg["length_penalty"], cfg["no_repeat_ngram"], EOT, soft_prompt)
        for i, toks in zip(chunk, tokens):
            outputs[i] = " ".join(enc.decode(toks).split())  # one line per input
    return outputs
