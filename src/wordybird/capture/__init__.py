"""What a training step leaves to record, caught by hooks: any model, optimizer and loop.

- ``parameters.py``: which parameters, by name, glob or predicate, and which of their rows.
- ``taps.py``: the hooks and reads shared by every loop: each recorded parameter's value,
  its gradient before clipping (summed over accumulation micro-batches), the optimizer's
  real state for it, the learning rate and the pre-clip global gradient norm.
- ``loop.py``: ``watch``, recording a plain PyTorch loop on every ``optimizer.step()``.
- ``shards.py``: FSDP2 parameters, of which each process holds rows, gathered whole to the
  main process; FSDP1, DeepSpeed ZeRO and other DTensor placements refused.

The Hugging Face ``Trainer`` uses the same taps through
:class:`~wordybird.training.callback.RecorderCallback`.
"""
