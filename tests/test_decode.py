"""decode.py: beam search on models with known outputs (exhaustive search as the reference), the
no-repeat n-gram rule, and greedy / beam decoding of a real GPT through its KV cache."""
import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from decode import banned_tokens, beam_search
from model import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")


class TableLM(torch.nn.Module):
    """A 'language model' whose next-token log-probs are a fixed function of the whole sequence,
    read back from its KV cache, so that a wrong cache reorder changes the results."""

    def __init__(self, fn, vocab, block_size=32):
        super().__init__()
        self.fn, self.vocab = fn, vocab
        self.config = SimpleNamespace(block_size=block_size, n_layer=1)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def new_kv_caches(self):
        return [[None, None]]

    def forward(self, idx, kv_caches=None, pos_offset=0):
        cache = kv_caches[0]
        seq = idx if cache[0] is None else torch.cat([cache[0], idx], dim=1)
        assert seq.size(1) == pos_offset + idx.size(1)
        cache[0], cache[1] = seq, seq
        logits = torch.stack([torch.tensor(self.fn(tuple(row)), dtype=torch.float) for row in seq.tolist()])
        return logits[:, None, :].expand(-1, idx.size(1), -1), None


def random_table(vocab, seed):
    """log-probs as a deterministic pseudo-random function of the sequence."""
    def fn(seq):
        g = torch.Generator().manual_seed(hash((seed,) + seq) % (2 ** 31))
        return torch.log_softmax(3 * torch.randn(vocab, generator=g), -1).tolist()
    return fn


def brute_force_best(fn, prompt, vocab, eos, max_new, lp):
    """Best score/len**lp over every EOS-terminated or max-length continuation."""
    best, best_seq = -math.inf, None
    for n in range(1, max_new + 1):
        for seq in itertools.product(range(vocab), repeat=n):
            if eos in seq[:-1] or (n < max_new and seq[-1] != eos):
                continue
            s = sum(fn(tuple(prompt) + seq[:i])[t] for i, t in enumerate(seq))
            if s / n ** lp > best:
                best, best_seq = s / n ** lp, [t for t in seq if t != eos]
    return best_seq


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_finds_the_highest_scoring_hypothesis(seed):
    vocab, eos, max_new = 4, 3, 3
    fn = random_table(vocab, seed)
    model = TableLM(fn, vocab)
    prompts = [[0, 1], [2, 2], [1, 0]]
    # beam 27 >= every live path of depth 3 (3^3): exhaustive, so it must equal brute force
    got = beam_search(model, prompts, beam_size=27, max_new_tokens=max_new, length_penalty=0.0,
                      no_repeat_ngram=0, eos=eos)
    assert got == [brute_force_best(fn, p, vocab, eos, max_new, 0.0) for p in prompts]
    # batching never changes an input's result
    assert [beam_search(model, [p], 27, max_new, 0.0, 0, eos)[0] for p in prompts] == got


def test_beam_beats_greedy_and_length_penalty():
    # from the prompt: A (token 0) p=.5, B (1) p=.4, EOS (3) p=.1; after A: EOS .3, A .7; after B: EOS .9
    def fn(seq):
        gen = seq[1:]
        probs = {(): [.5, .4, 1e-9, .1], (0,): [.7, 1e-9, 1e-9, .3], (1,): [.05, .05, 1e-9, .9]}.get(
            gen, [.97, 1e-9, 1e-9, .03])
        return [math.log(p) for p in probs]
    model = TableLM(fn, 4)
    assert beam_search(model, [[2]], beam_size=1, max_new_tokens=2, no_repeat_ngram=0, eos=3) == [[0, 0]]
    assert beam_search(model, [[2]], beam_size=4, max_new_tokens=3, length_penalty=0.0, no_repeat_ngram=0,
                       eos=3) == [[1]]  # B EOS: .36 beats A EOS .15 and A A ...


def test_no_repeat_ngram():
    assert sorted(banned_tokens([5, 6, 7, 5, 6], 3)) == [7]
    assert banned_tokens([5, 6, 7], 4) == []
    assert sorted(banned_tokens([1, 2, 1], 1)) == [1, 1, 2]
    # a model that always wants token 1: with no repeated bigram it must vary
    model = TableLM(lambda seq: [0.0, 5.0, 1.0, 0.5, -9.0], 5)
    out = beam_search(model, [[0]], beam_size=3, max_new_tokens=12, no_repeat_ngram=2, eos=4)[0]
    bigrams = list(zip(out, out[1:]))
    assert len(out) >= 6 and len(bigrams) == len(set(bigrams))
    assert beam_search(model, [[0]], 3, 12, no_repeat_ngram=0, eos=4)[0] == [1] * 12  # without the rule


def test_real_gpt_greedy_matches_generate_and_cached_beams_match_uncached_log_probs():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=16)).eval()
    prompts = [[5, 9, 2, 7], [1, 1, 3, 60], [40, 41, 42, 43]]
    got = beam_search(model, prompts, beam_size=1, max_new_tokens=10, no_repeat_ngram=0, eos=63)
    for p, g in zip(prompts, got):
        ref = model.generate(torch.tensor([p]), 10, temperature=0)[0, len(p):].tolist()
        ref = ref[:ref.index(63)] if 63 in ref else ref
        assert g == ref
    # beam 4 through the KV cache (reordered as beams re-rank) = beam 4 over log-probs recomputed
    # from the whole sequence, without a cache
    @torch.no_grad()
    def uncached(seq):
        return torch.log_softmax(model(torch.tensor([seq]))[0][0, -1].float(), -1).tolist()
    wide = beam_search(model, prompts, beam_size=4, max_new_tokens=10, no_repeat_ngram=3, eos=63)
    assert wide == beam_search(TableLM(uncached, 64), prompts, 4, 10, no_repeat_ngram=3, eos=63)
    for w in wide:
        trigrams = list(zip(w, w[1:], w[2:]))
        assert 1 <= len(w) <= 10 and 63 not in w and len(trigrams) == len(set(trigrams))
