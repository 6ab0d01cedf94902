"""The Wordybird model: a tiny GPT-2 with bf16 parameters, computed in fp32 where bf16 is slow.

The experiments need bf16 parameters, gradients and Adam state (that is what is recorded),
but CPUs without native bf16 matrix multiplies run a bf16 forward many times slower than fp32
(measured: benchmarks/bench_training.py).
:func:`compute_in` makes the model's forward run on parameters upcast to the compute dtype:
the casts are part of the autograd graph, so gradients flow back to the bf16 parameters as
bf16, and tied weights (GPT-2's ``wte``/``lm_head``) are upcast once and stay tied.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from wordybird.errors import WordybirdError
from wordybird.training.tokenizer import VOCAB_SIZE

ComputeDtype = Literal["auto", "float32", "bfloat16"]


@dataclass(frozen=True)
class ModelConfig:
    """GPT-2 shape; the defaults are the notebook's Wordybird."""

    vocab_size: int = VOCAB_SIZE
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 2
    n_positions: int = 128
    #: GPT-2's dropout (residual, embedding and attention). Each process of a multi-process
    #: run draws its own masks, so only without dropout does such a run train exactly as
    #: one process with the same global batch.
    dropout: float = 0.1

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


def build_model(config: ModelConfig, seed: int, param_dtype: torch.dtype = torch.bfloat16):
    """A freshly initialised ``GPT2LMHeadModel`` (seeded), cast to ``param_dtype``.

    Initialised in fp32 and then cast, as the notebook did, so the bf16 weights are the
    rounded fp32 initialisation.
    """
    from transformers import GPT2Config, GPT2LMHeadModel, set_seed

    set_seed(seed)
    gpt2 = GPT2Config(
        vocab_size=config.vocab_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_positions=config.n_positions,
        n_ctx=config.n_positions,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
    )
    return GPT2LMHeadModel(gpt2).to(param_dtype)


def resolve_compute_dtype(choice: ComputeDtype, device: torch.device) -> torch.dtype:
    """``auto`` is fp32 on CPU (no native bf16 matmul) and bf16 on accelerators."""
    if choice == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if choice == "float32":
        return torch.float32
    if choice == "bfloat16":
        return torch.bfloat16
    raise WordybirdError(f"unknown compute dtype {choice!r}; choose auto, float32 or bfloat16")


def compute_in(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Make ``model``'s forward compute in ``dtype`` while its parameters keep their dtype.

    Replaces the instance's ``forward`` (the class is untouched, so ``save_pretrained`` and
    checkpoints are plain GPT-2). A no-op when every parameter already has ``dtype``.
    """
    if all(p.dtype == dtype for p in model.parameters()):
        return model
    class_forward = type(model).forward.__get__(model)
    inside = False

    @functools.wraps(class_forward)
    def forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal inside
        if inside:  # functional_call re-enters model.__call__: run the real forward
            return class_forward(*args, **kwargs)
        # named_parameters() lists a tied parameter once: one cast, and functional_call
        # (tie_weights=True) substitutes it everywhere the original is used.
        upcast = {
            name: p.to(dtype) if p.is_floating_point() else p
            for name, p in model.named_parameters()
        }
        inside = True
        try:
            return torch.func.functional_call(model, upcast, args, kwargs)
        finally:
            inside = False

    model.forward = forward
    return model
