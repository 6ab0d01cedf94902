"""A plain training loop recorded by ``wordybird.watch``, for tests/test_sharded.py.

Modes:
- ``one``: one process, no sharding, the whole global batch (the reference);
- ``fsdp2``: under ``torchrun --nproc_per_node=N``, the model sharded by ``fully_shard``,
  each process taking its 1/N of every global batch (the same samples, in order); then, in
  the same process group, what is not supported (FSDP1, a DTensor sharded on dim 1, each
  process sharding over a mesh of its own, recorders on the wrong processes, optimizer state
  that is no DTensor, the Trainer's callback on FSDP2 parameters), printing each refusal's
  message as one ``refused: ...`` line (stores of those under OUT/refusals).

Usage: fsdp_loop.py OUT MODE
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from transformers import GPT2Config, GPT2LMHeadModel

import wordybird

GLOBAL_BATCH = 4
#: vocab 97: an uneven split (49 and 48 rows); rows chosen across both processes' shares, on
#: one process's only, and all of them
PARAMETERS = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.mlp.c_fc.*"]
ROWS = {"transformer.wpe.weight": [1, 2, 7], "transformer.h.0.mlp.c_fc.weight": [3, 9, 12, 15]}

out, mode = sys.argv[1], sys.argv[2]
if mode != "one":
    dist.init_process_group("gloo")
world = dist.get_world_size() if dist.is_initialized() else 1
rank = dist.get_rank() if dist.is_initialized() else 0


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=97, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0  # no RNG in the forward
    return GPT2LMHeadModel(config)


def shard(model: GPT2LMHeadModel, **kwargs) -> GPT2LMHeadModel:
    from torch.distributed.fsdp import fully_shard

    for block in model.transformer.h:
        fully_shard(block, **kwargs)
    return fully_shard(model, **kwargs)


def train() -> None:
    model = tiny_gpt2()
    if mode == "fsdp2":
        model = shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens = torch.randint(97, (16, 16), generator=torch.Generator().manual_seed(1))
    mine = GLOBAL_BATCH // world
    # step 1, then the recording resumed for steps 2-4, recording every other one (2 and 4):
    # the processes must agree on the step count the main one resumes from
    for steps, every in ((range(1), 1), (range(1, 4), 2)):
        path = os.path.join(out, "rec.zarr")
        recorder = wordybird.StreamingRecorder(path, resume=steps[0] > 0) if rank == 0 else None
        with wordybird.watch(
            model, optimizer, recorder, parameters=PARAMETERS, rows=ROWS, record_every=every
        ) as run:
            for step in steps:
                batch = tokens[step * GLOBAL_BATCH + rank * mine :][:mine]
                loss = model(input_ids=batch, labels=batch).loss
                loss.backward()
                loss = loss.detach()
                if world > 1:  # the global batch's mean, as one process computes it
                    dist.all_reduce(loss)
                    loss /= world
                run.log(losses=loss)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)  # the record: pre-clip
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)


def refused(attempt) -> None:
    try:
        attempt()
    except wordybird.WordybirdError as error:
        say(f"refused: {error}")
    else:
        say("accepted")


def say(line: str) -> None:
    """One line in one write: both processes share the pipe, and under torchrun (which sets
    PYTHONUNBUFFERED) print() writes the text and its newline apart, so two processes' lines
    could merge (seen once)."""
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


class RowNormSGD(torch.optim.SGD):
    """SGD keeping, besides, a plain tensor of this process's own rows' gradient norms:
    optimizer state that is no DTensor, so which rows it covers is unknown to a recorder."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["row_norms"] = p.grad.to_local().norm(dim=-1)
        return super().step(closure)


def refusals() -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.tensor import Shard

    from wordybird.training.callback import RecorderCallback

    def watch(model: torch.nn.Module, recorder: wordybird.StreamingRecorder | None) -> None:
        optimizer = torch.optim.AdamW(model.parameters())
        wordybird.watch(model, optimizer, recorder, parameters=["*wte*"])

    def local_state(recorder: wordybird.StreamingRecorder | None) -> None:
        model = shard(tiny_gpt2())
        optimizer = RowNormSGD(model.parameters(), lr=0.1)
        wordybird.watch(model, optimizer, recorder, parameters=["*wte*"])
        batch = torch.arange(16).reshape(1, 16)
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()  # the recorded step: refused before any gather

    os.makedirs(os.path.join(out, "refusals"), exist_ok=True)
    recorder = wordybird.StreamingRecorder(os.path.join(out, "refusals", f"rec{rank}.zarr"))
    here = recorder if rank == 0 else None
    refused(lambda: watch(FullyShardedDataParallel(tiny_gpt2(), device_id="cpu"), here))
    refused(
        lambda: watch(shard(tiny_gpt2(), shard_placement_fn=lambda p: Shard(p.dim() - 1)), here)
    )
    alone = init_device_mesh("cpu", (1, world), mesh_dim_names=("alone", "all"))["alone"]
    refused(lambda: watch(shard(tiny_gpt2(), mesh=alone), here))  # each process on its own
    # rank 0 without a recorder, rank 1 with one: both refuse before any collective
    refused(lambda: watch(tiny_gpt2(), recorder if rank == 1 else None))
    refused(lambda: local_state(here))
    recorder.close()
    sharded = shard(tiny_gpt2())
    callback = RecorderCallback(None if rank else object(), parameters=["*wte*"])
    state = SimpleNamespace(is_world_process_zero=rank == 0, global_step=0)
    args = SimpleNamespace(process_index=rank, world_size=world)
    refused(lambda: callback.on_train_begin(args, state, None, model=sharded, optimizer=None))


train()
if mode == "fsdp2":
    refusals()
if dist.is_initialized():  # else gloo's threads can abort the exit (SIGABRT)
    dist.destroy_process_group()
