"""Models held by this process (the Python API's in-memory models), named `memory:<digest of the weights>` so the
runner plans, identifies, loads and stores them like any checkpoint. Loading one gives a copy: quantizing it
never touches the caller's model. They exist only in the process that registered them (no Ray, no shards)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ptq_eval.errors import UserError

PREFIX = "memory:"


@dataclass(frozen=True)
class HeldModel:
    model: torch.nn.Module
    tokenizer: object
    weights_id: str


_HELD: dict[str, HeldModel] = {}


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the model's class and config (as a local checkpoint's config.json is hashed) and every
    parameter and buffer, by name, dtype, shape and bytes."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    config = getattr(model, "config", None)
    digest.update((config.to_json_string() if hasattr(config, "to_json_string") else repr(config)).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def hold(model: torch.nn.Module, tokenizer) -> str:
    """Register a model and its tokenizer; returns its reference (the same weights and config give the same
    reference). `release` it when done: a held model stays alive until then."""
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"expected a torch model (e.g. from AutoModelForCausalLM), not {type(model).__name__}")
    if tokenizer is None:
        raise UserError("an in-memory model needs its tokenizer: pass tokenizer=")
    digest = weights_digest(model)
    reference = f"{PREFIX}{digest[:16]}"
    _HELD[reference] = HeldModel(model, tokenizer, f"sha256:{digest}")
    return reference


def release(reference: str) -> None:
    _HELD.pop(reference, None)


def is_held(reference: str) -> bool:
    return reference.startswith(PREFIX)


def held(reference: str) -> HeldModel:
    """The model behind a `memory:` reference, or a clear error in any other process."""
    if reference not in _HELD:
        raise UserError(
            f"{reference}: no such in-memory model in this process (they live only in the Python session that "
            "passed them to ptq_eval.evaluate; a saved checkpoint directory works anywhere)"
        )
    return _HELD[reference]
