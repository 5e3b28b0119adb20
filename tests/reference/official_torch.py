"""The official USAE training math in PyTorch, computed the way the official code computes it.

This is the baseline of ``benchmarks/step_vs_official.py``, so it keeps the official code's
costs on purpose: the dense ``z @ D`` decode, ``torch.topk`` for the AuxK's top half, gradients
through every model's decoder (although only the source model is updated) and the per-model
AdamW + warmup-cosine schedule stepped after the optimiser. It is checked against the official
numbers in ``tests/test_official_torch_reference.py``. It is not part of the library.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Dictionary(nn.Module):
    """Raw ``[n, d]`` dictionary used row-normalised (differentiably), no bias."""

    def __init__(self, num_concepts: int, width: int):
        super().__init__()
        self._weights = nn.Parameter(torch.randn(num_concepts, width))

    def get_dictionary(self) -> torch.Tensor:
        return self._weights / (self._weights.norm(dim=1, keepdim=True) + 1e-8)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return codes @ self.get_dictionary()


class Encoder(nn.Module):
    """``final_block = Sequential(Linear(d, n), BatchNorm1d(n))``, then ReLU and TopK."""

    def __init__(self, width: int, num_concepts: int):
        super().__init__()
        self.final_block = nn.Sequential(
            nn.Linear(width, num_concepts), nn.BatchNorm1d(num_concepts)
        )


class OfficialSAE(nn.Module):
    """One model's TopK SAE; state-dict keys are the official checkpoint's."""

    def __init__(self, width: int, num_concepts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.encoder = Encoder(width, num_concepts)
        self.dictionary = Dictionary(num_concepts, width)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, d] -> (pre_codes [B, n], codes [B, n])``."""
        pre_codes = self.encoder.final_block(x)
        codes = torch.relu(pre_codes)
        top = torch.topk(codes, self.top_k, dim=-1)
        return pre_codes, torch.zeros_like(codes).scatter(-1, top.indices, top.values)


def top_k_auxiliary_loss(x, x_hat, pre_codes, codes, dictionary, penalty=0.1, l1=True):
    """Official ``top_k_auxiliary_loss_L1`` (``l1=True``) or ``top_k_auxiliary_loss``."""
    error = torch.abs if l1 else torch.square
    residual = x - x_hat
    unchosen = torch.relu(pre_codes) - codes
    aux = torch.topk(unchosen, k=unchosen.shape[1] // 2, dim=1)
    aux_codes = torch.zeros_like(codes).scatter(-1, aux.indices, aux.values)
    residual_hat = aux_codes @ dictionary
    return error(residual).mean() + penalty * error(residual - residual_hat).mean()


class CosineScheduler:
    """The official table: ``linspace(start, base, warmup)`` then cosine to ``final``."""

    def __init__(self, optimizer, base, final, total_iters, warmup_iters, start, as_float=False):
        self.optimizer = optimizer
        # On CUDA, AdamW's default foreach path refuses a tensor learning rate: pass a float.
        self.as_float = as_float
        warmup = np.linspace(start, base, warmup_iters)
        iters = np.arange(total_iters - warmup_iters)
        cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
        self.schedule = torch.tensor(np.concatenate((warmup, cosine))).float()
        self.final, self.total_iters, self.iter = final, total_iters, 0

    def step(self) -> None:
        self.iter += 1
        lr = self.schedule[self.iter] if self.iter < self.total_iters else self.final
        for group in self.optimizer.param_groups:
            group["lr"] = float(lr) if self.as_float else lr


class OfficialUSAE:
    """M models, one AdamW + scheduler each, and the official training step (on ``device``,
    a torch device name: the CPU for the tests, ``"cuda"`` for the GPU benchmark)."""

    def __init__(
        self,
        widths,
        num_concepts,
        top_k,
        lr=3e-4,
        weight_decay=1e-5,
        total_iters=1000,
        warmup_iters=100,
        start_lr=1e-6,
        final_lr=1e-6,
        l1=True,
        seed=0,
        device="cpu",
    ):
        torch.manual_seed(seed)
        self.models = [OfficialSAE(w, num_concepts, top_k).to(device) for w in widths]
        self.optimizers = [
            torch.optim.AdamW(
                m.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay
            )
            for m in self.models
        ]
        self.schedulers = [
            CosineScheduler(
                o, lr, final_lr, total_iters, warmup_iters, start_lr, str(device) != "cpu"
            )
            for o in self.optimizers
        ]
        self.l1 = l1

    def load(self, states: list[dict]) -> None:
        """Load one state dict (official key names, numpy or torch values) per model."""
        for model, state in zip(self.models, states, strict=True):
            model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()})

    def losses(self, source: int, batch: list[torch.Tensor]) -> torch.Tensor:
        """Summed loss of encoding ``batch[source]`` and decoding into every model."""
        pre_codes, codes = self.models[source].encode(batch[source])
        total = 0.0
        for target, model in enumerate(self.models):
            dictionary = model.dictionary.get_dictionary()
            x_hat = codes @ dictionary
            total = total + top_k_auxiliary_loss(
                batch[target], x_hat, pre_codes, codes, dictionary, l1=self.l1
            )
        return total

    def step(self, source: int, batch: list[torch.Tensor]) -> float:
        """One official training step; returns the loss before the update."""
        for model in self.models:
            model.train()
        self.optimizers[source].zero_grad()  # official: only the sampled model's gradients
        loss = self.losses(source, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.models[source].parameters(), 1.0)
        self.optimizers[source].step()
        self.schedulers[source].step()
        return float(loss.detach())
