import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from finetune import completion_loss
from flops import forward_flops, num_params
from model import GPT, PRESETS, GPTConfig, HeadCrossEntropy


def meta_model(name):
    with torch.device("meta"):
        return GPT(PRESETS[name])


def test_paper_models_have_exact_parameter_counts():
    assert meta_model("gpt2-small").num_params() == 125_226_240
    assert meta_model("gpt3-xl").num_params() == 1_315_723_264
    assert num_params(PRESETS["gpt3-xl"]) == 1_315_723_264


def test_presets_shapes():
    xl = PRESETS["gpt3-xl"]
    assert (xl.n_layer, xl.n_embd, xl.n_head, xl.block_size, xl.vocab_size) == (24, 2048, 16, 2048, 50257)
    small = PRESETS["gpt2-small"]
    assert (small.n_layer, small.n_embd, small.n_head, small.block_size) == (12, 768, 12, 2048)
    assert {"tiny", "mini"} <= set(PRESETS)


def test_head_is_tied_and_has_no_bias():
    m = GPT(GPTConfig(block_size=16, vocab_size=100, n_layer=1, n_head=2, n_embd=16))
    assert m.lm_head.weight is m.transformer.wte.weight
    assert m.lm_head.bias is None
    assert m.transformer.h[0].attn.q_proj.bias is not None and m.transformer.h[0].mlp.c_fc.bias is not None


def test_residual_projections_use_scaled_init():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=100, n_layer=8, n_head=4, n_embd=256))
    proj = m.transformer.h[0].mlp.c_proj.weight.std().item()
    fc = m.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(fc - 0.02) < 0.001
    assert abs(proj - 0.02 / 4) < 0.0005  # 0.02 / sqrt(2 * 8)


def test_attention_is_causal():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16)).eval()
    x = torch.randint(0, 50, (1, 10))
    y = x.clone()
    y[0, 7] = (y[0, 7] + 1) % 50
    a, _ = m(x)
    b, _ = m(y)
    assert torch.allclose(a[0, :7], b[0, :7], atol=1e-6)
    assert not torch.allclose(a[0, 7:], b[0, 7:])


def test_loss_mask_restricts_loss_to_marked_positions():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_embd=16))
    x = torch.randint(0, 50, (2, 8))
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, 5:] = True
    logits, _ = m(x)
    loss_sum, count = completion_loss(m, x, x, mask)  # the one masked cross-entropy
    loss = loss_sum / count
    full = torch.nn.functional.cross_entropy(logits[:, 5:].reshape(-1, 50), x[:, 5:].reshape(-1))
    assert torch.allclose(loss, full, atol=1e-6)


def test_greedy_generation_with_kv_cache_matches_full_recompute():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=32, vocab_size=60, n_layer=2, n_head=2, n_embd=32)).eval()
    prompt = torch.randint(0, 60, (2, 5))
    out = m.generate(prompt, max_new_tokens=10, temperature=0)
    ref = prompt
    with torch.no_grad():
        for _ in range(10):
            ref = torch.cat([ref, m(ref)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ref)


def test_kv_cache_holds_every_position_and_doubles_when_full():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=32, vocab_size=60, n_layer=2, n_head=2, n_embd=32)).eval()
    seq = torch.randint(0, 60, (2, 23))
    stepwise, capacities = m.new_kv_caches(), set()
    with torch.no_grad():
        m(seq[:, :3], kv_caches=stepwise)
        for t in range(3, 23):
            m(seq[:, t:t + 1], kv_caches=stepwise, pos_offset=t)
            capacities.add(stepwise[0][0].size(2))
        at_once = m.new_kv_caches()
        m(seq, kv_caches=at_once)
    assert capacities == {6, 12, 24}  # 3 positions, then twice as many each time it fills
    for a, b in zip(stepwise, at_once):
        assert a[2] == b[2] == 23
        torch.testing.assert_close(a[0][:, :, :23], b[0])
        torch.testing.assert_close(a[1][:, :, :23], b[1])


def test_sampling_respects_top_k():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=32, vocab_size=60, n_layer=1, n_head=2, n_embd=16)).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        allowed = m(prompt)[0][0, -1].argmax().item()
    for _ in range(5):
        assert m.generate(prompt, 1, temperature=1.0, top_k=1)[0, -1].item() == allowed


def test_dense_forward_flops_match_torch_flop_counter():
    """flops.py's dense forward equals what FlopCounterMode counts (it skips softmax; we add 3hS^2)."""
    cfg = GPTConfig(block_size=64, vocab_size=1000, n_layer=2, n_head=4, n_embd=64)
    m = GPT(cfg)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        m(torch.randint(0, 1000, (1, 64)))
    softmax = cfg.n_layer * 3 * cfg.n_head * 64 * 64
    assert counter.get_total_flops() == forward_flops(cfg, 64, 0.0, vocab=1000) - softmax


def test_activation_checkpointing_recomputes_blocks_with_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=100, n_layer=2, n_head=2, n_embd=32, dropout=0.1))
    idx, targets = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    calls = []
    for block in model.transformer.h:
        block.register_forward_pre_hook(lambda *_: calls.append(1))  # the recompute may stop early

    def step(checkpointing):
        model.activation_checkpointing = checkpointing
        model.zero_grad(set_to_none=True)
        calls.clear()
        torch.manual_seed(1)  # the same dropout masks in both runs (and in the recompute)
        _, loss = model(idx, targets)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}, len(calls)

    loss, grads, forwards = step(False)
    ac_loss, ac_grads, ac_forwards = step(True)
    assert (forwards, ac_forwards) == (2, 4)  # with checkpointing each block runs again in backward
    assert ac_loss == pytest.approx(loss, abs=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(ac_grads[name], grad, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("scale", [1.0, 0.25])  # loss.backward(), and a quarter of it (4 accumulated micro-batches)
def test_lm_head_loss_in_one_pass_matches_cross_entropy_of_the_logits(monkeypatch, scale):
    monkeypatch.setattr(HeadCrossEntropy, "CHUNK", 7)  # 20 tokens: chunks of 7, 7 and 6
    torch.manual_seed(0)
    x, w, targets = torch.randn(20, 16), torch.randn(50, 16), torch.randint(0, 50, (20,))
    x[3] *= 40  # logits far from 0: the max-subtraction must keep exp finite
    x1, w1, x2, w2 = (t.clone().requires_grad_() for t in (x, w, x, w))
    ref = torch.nn.functional.cross_entropy(x1 @ w1.T, targets)
    (ref * scale).backward()
    loss = HeadCrossEntropy.apply(x2, w2, targets)
    (loss * scale).backward()
    assert torch.isfinite(ref) and loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(w2.grad, w1.grad, rtol=1e-5, atol=1e-7)


def test_training_loss_on_a_cpu_is_the_mean_cross_entropy_of_the_eval_logits():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=100, n_layer=1, n_head=2, n_embd=32))
    idx, targets = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        logits, eval_loss = model(idx, targets)
    logits_then, loss = model(idx, targets)  # grad enabled: the one-pass head, which keeps no logits
    assert logits_then is None and loss.requires_grad
    expected = torch.nn.functional.cross_entropy(logits.view(-1, 100), targets.view(-1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6) and eval_loss.item() == pytest.approx(expected.item(), rel=1e-6)
