"""A plain Trainer run recorded by RecorderCallback, for tests/test_distributed.py.

Run with ``torchrun --nproc_per_node=N`` (each process's batch = global batch / N) or with
``python`` (one process, the whole global batch): the global batches are the same samples
in both, in order, so the recordings must agree.

Usage: ddp_trainer.py OUT GLOBAL_BATCH
"""

from __future__ import annotations

import os
import sys

import torch
from torch.utils.data import SequentialSampler
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import wordybird

out, global_batch = sys.argv[1], int(sys.argv[2])
world = int(os.environ.get("WORLD_SIZE", "1"))
main = int(os.environ.get("RANK", "0")) == 0


class InOrder(Trainer):
    def _get_train_sampler(self, *args, **kwargs):  # every process sees the same order
        return SequentialSampler(self.train_dataset)


torch.manual_seed(0)
config = GPT2Config(vocab_size=96, n_positions=16, n_embd=16, n_layer=2, n_head=2)
config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0  # no RNG in the forward
model = GPT2LMHeadModel(config)
tokens = torch.randint(96, (64, 16), generator=torch.Generator().manual_seed(1))
data = [{"input_ids": t, "labels": t} for t in tokens]
args = TrainingArguments(
    output_dir=os.path.join(out, "trainer"),
    max_steps=4,
    per_device_train_batch_size=global_batch // world,
    learning_rate=1e-2,
    max_grad_norm=0.5,  # small: clipping happens, the recording stays pre-clip
    save_strategy="no",
    report_to="none",
    disable_tqdm=True,
    dataloader_drop_last=True,
    use_cpu=True,
    seed=0,
)
recorder = wordybird.StreamingRecorder(os.path.join(out, "rec.zarr")) if main else None
callback = wordybird.RecorderCallback(recorder, parameters=["transformer.wte.weight"])
InOrder(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
if torch.distributed.is_initialized():  # else gloo's threads can abort the exit (SIGABRT)
    torch.distributed.destroy_process_group()
