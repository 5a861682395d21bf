"""
Multi-process training, all in one place: pretrain.py calls these and stays a single-GPU story.

Under torchrun every process builds the same model and the same masks (seeded by name, see
sparsity.py), and `check_same` verifies that before anything is wrapped. Then `wrap` either
- replicates the model with DDP (every GPU holds all of it; gradients are all-reduced), or
- with --fsdp, shards it with FSDP2 (`fully_shard` per block, then the root: embeddings, tied
  head, final LayerNorm). Parameters become DTensors sharded on dim 0 and the masks are sharded the
  same way, so masking gradients, weights and Adam's moments stays the same three multiplies, on
  each rank's shard.
Checkpoints are always the ordinary single-process format: under FSDP `state_dicts` gathers the
full tensors on rank 0's CPU, and `load_optimizer` hands each rank its shards of a full state, so
runs with and without FSDP resume each other.
"""
import os

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import distribute_tensor
from torch.nn.parallel import DistributedDataParallel as DDP

from common import check


def setup(device, fsdp=False):
    """Under torchrun, join the process group. Returns (rank, world_size, device): cuda:<local rank>."""
    check(not fsdp or "RANK" in os.environ, "--fsdp shards over processes: launch with torchrun, "
          "e.g. torchrun --standalone --nproc_per_node=2 pretrain.py --fsdp=True")
    check(not fsdp or device.startswith(("cuda", "cpu")), "--fsdp needs --device=cuda or cpu")
    if "RANK" not in os.environ:
        return 0, 1, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if device.startswith("cuda"):  # device_id: NCCL binds this rank's GPU now instead of guessing it from the rank
        dist.init_process_group(backend="nccl", device_id=torch.device(device))
    else:
        dist.init_process_group(backend="gloo")
    return rank, dist.get_world_size(), device


def teardown():
    """Leave the process group together: without the barrier rank 1 shuts its connections down
    while rank 0 still writes the checkpoint (a 2-process CPU run once hung after its last save)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier():
    if dist.is_initialized():
        dist.barrier()


def all_gather(obj):
    """[obj of rank 0, obj of rank 1, ...]; [obj] in a single process."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def fingerprint(model, masks):
    """Two numbers that differ if any weight or mask differs; compared across ranks."""
    full = lambda p: p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP: gather one weight at a time
    w = sum(float(full(p.detach()).double().sum()) for p in model.parameters())
    m = sum(float(mask.double().mul(torch.arange(mask.numel(), device=mask.device).view(mask.shape) % 9973).sum())
            for mask in masks.values())
    return [w, m]


def check_same(model, masks):
    """Every rank holds the same weights and masks (before DDP's broadcast or FSDP's sharding could hide it)."""
    prints = all_gather(fingerprint(model, masks))
    check(all(p == prints[0] for p in prints), "ranks disagree on initial weights or masks")


def wrap(model, masks, fsdp, compile, device):
    """
    The model to train and the masks laid out like its parameters. FSDP shards in place (the GPT
    itself becomes the sharded module, masks become DTensors); otherwise torch.compile and, with
    several processes, DDP wrap the GPT and the masks stay as they are.
    """
    if fsdp:
        mesh = init_device_mesh(device.split(":")[0], (dist.get_world_size(),))
        for block in model.transformer.h:
            if compile:
                block.compile()  # per block and in place (parameter names unchanged), before sharding
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        params = dict(model.named_parameters())
        # every rank holds the same full masks (checked), so each slices its own shard: no communication
        return model, {n: distribute_tensor(m, params[n].device_mesh, params[n].placements, src_data_rank=None)
                       for n, m in masks.items()}
    if compile:
        model = torch.compile(model)
    if dist.is_initialized() and dist.get_world_size() > 1:
        model = DDP(model, device_ids=[int(device.split(":")[1])] if device.startswith("cuda") else None)
    return model, masks


def set_grad_sync(model, sync):
    """Gradient accumulation: synchronize (FSDP: reduce-scatter, DDP: all-reduce) only when `sync`,
    i.e. on the last micro-step. Set before the forward pass."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)
    elif isinstance(model, DDP):
        model.require_backward_grad_sync = sync


def reshard(model):
    """After an evaluation under FSDP: no backward follows to free the gathered root weights."""
    if isinstance(model, FSDPModule):
        model.reshard()


def state_dicts(model, optimizer):
    """(model state, optimizer state) as a single process would save them; under FSDP a collective
    on every rank, and only rank 0 gets the full tensors (on its CPU)."""
    if not isinstance(model, FSDPModule):
        return model.state_dict(), optimizer.state_dict()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=options)
    if dist.get_rank() == 0:  # the gather copies the tied head; share one tensor again, as state_dict() does
        model_state["lm_head.weight"] = model_state["transformer.wte.weight"]
        optimizer_state = _optimizer_state_by_index(optimizer_state)
    return model_state, optimizer_state


def load_optimizer(model, optimizer, state):
    """Load a full optimizer.state_dict(); under FSDP every rank keeps its shards of it."""
    if isinstance(model, FSDPModule):
        set_optimizer_state_dict(model, optimizer, _optimizer_state_by_name(state, optimizer, model),
                                 options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


# FSDP state dicts key the optimizer state by parameter name; checkpoints use optimizer.state_dict()'s
# numbering (parameters in param-group order), so runs with and without FSDP can resume each other
def _optimizer_state_by_index(state):
    index = {name: i for i, name in enumerate(n for g in state["param_groups"] for n in g["params"])}
    return dict(state={index[n]: s for n, s in state["state"].items()},
                param_groups=[{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]])


def _optimizer_state_by_name(state, optimizer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    name = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    return dict(state={name[i]: s for i, s in state["state"].items()},
                param_groups=[{**g, "params": [name[i] for i in g["params"]]} for g in state["param_groups"]])
