"""Generate tests/fixtures/crosscoder_reference.npz by running dictionary_learning's crosscoders.

The crosscoders (``CrossCoder``, ``BatchTopKCrossCoder`` and their trainers' loss and threshold
code) live in the science-of-finetuning fork of saprmarks/dictionary_learning (Minder et al.
2025), not in the ``dictionary-learning`` release on PyPI (0.1.0 has no crosscoder). Run with a
checkout of that fork (commit 173f7fa used for the committed fixture), torch and einops:

    python tests/reference/make_crosscoder_fixture.py /path/to/fork [out.npz]

Only the model classes and the two trainer methods used here are imported; the data-loading
modules the package pulls in (``datasets``, ``zstandard``, ``nnsight``) are stubbed when absent.
Nothing of their code is copied: the fixture holds inputs, parameters and outputs only.
"""

import importlib
import sys
import types
from pathlib import Path

import numpy as np
import torch as th

B, L, D, N, K = 16, 2, 4, 8, 2
L1_PENALTY = 0.3


def _load(fork: Path):
    for name in ("datasets", "zstandard", "nnsight"):
        try:
            importlib.import_module(name)
        except ImportError:
            stub = types.ModuleType(name)
            stub.load_dataset = None
            sys.modules[name] = stub
    for package, path in [
        ("dictionary_learning", fork / "dictionary_learning"),
        ("dictionary_learning.trainers", fork / "dictionary_learning" / "trainers"),
    ]:
        module = types.ModuleType(package)  # skip the packages' __init__ (buffers, nnsight)
        module.__path__ = [str(path)]
        sys.modules[package] = module
    dictionary = importlib.import_module("dictionary_learning.dictionary")
    trainers = importlib.import_module("dictionary_learning.trainers.crosscoder")
    return dictionary, trainers


def main(fork: str, out: str):
    dictionary, trainers = _load(Path(fork))
    th.manual_seed(0)
    x = th.randn(B, L, D)
    arrays = {"x": x.numpy()}

    # L1 crosscoder: forward, loss terms and gradients of the trainer's loss (MSE variant)
    l1 = dictionary.CrossCoder(D, N, L, norm_init_scale=0.5)
    with th.no_grad():
        l1.encoder.bias.copy_(0.1 * th.randn(N))
        l1.decoder.bias.copy_(0.1 * th.randn(L, D))
    host = types.SimpleNamespace(
        ae=l1, use_mse_loss=True, l1_penalty=L1_PENALTY, steps_since_active=None
    )
    log = trainers.CrossCoderTrainer.loss(host, x, logging=True, normalize_activations=False)
    loss = trainers.CrossCoderTrainer.loss(host, x, normalize_activations=False)
    loss.backward()
    arrays.update(
        l1_encoder_weight=l1.encoder.weight.detach().numpy(),
        l1_encoder_bias=l1.encoder.bias.detach().numpy(),
        l1_decoder_weight=l1.decoder.weight.detach().numpy(),
        l1_decoder_bias=l1.decoder.bias.detach().numpy(),
        l1_codes=l1.encode(x, normalize_activations=False).detach().numpy(),
        l1_scaled_codes=log.f.detach().numpy(),
        l1_x_hat=log.x_hat.detach().numpy(),
        l1_mse=np.float64(log.losses["mse_loss"]),
        l1_sparsity=np.float64(log.losses["sparsity_loss"]),
        l1_loss=np.float64(loss.item()),
        l1_penalty=np.float64(L1_PENALTY),
        l1_grad_encoder_weight=l1.encoder.weight.grad.numpy(),
        l1_grad_encoder_bias=l1.encoder.bias.grad.numpy(),
        l1_grad_decoder_weight=l1.decoder.weight.grad.numpy(),
        l1_grad_decoder_bias=l1.decoder.bias.grad.numpy(),
    )

    # BatchTopK crosscoder: batch-wide selection on decoder-norm-scaled codes, threshold update
    top = dictionary.BatchTopKCrossCoder(D, N, L, k=K, norm_init_scale=1.0)
    with th.no_grad():
        top.encoder.bias.copy_(0.1 * th.randn(N))
        top.decoder.weight.mul_(th.rand(L, N, 1) + 0.5)  # uneven decoder norms
    f, f_scaled, _, _, post_scaled = top.encode(
        x, return_active=True, use_threshold=False, normalize_activations=False
    )
    host = types.SimpleNamespace(ae=top, threshold_beta=0.999)
    trainers.BatchTopKCrossCoderTrainer.update_threshold(host, f_scaled)
    first = float(top.threshold)
    second_batch = th.randn(B, L, D)
    _, f2_scaled, _, _, _ = top.encode(
        second_batch, return_active=True, use_threshold=False, normalize_activations=False
    )
    trainers.BatchTopKCrossCoderTrainer.update_threshold(host, f2_scaled)
    inference = top.encode(x, use_threshold=True, normalize_activations=False)
    arrays.update(
        top_encoder_weight=top.encoder.weight.detach().numpy(),
        top_encoder_bias=top.encoder.bias.detach().numpy(),
        top_decoder_weight=top.decoder.weight.detach().numpy(),
        top_decoder_bias=top.decoder.bias.detach().numpy(),
        top_k=np.int64(K),
        top_codes=f.detach().numpy(),
        top_scores=post_scaled.detach().numpy(),
        top_x_hat=top.decode(f, denormalize_activations=False).detach().numpy(),
        top_second_batch=second_batch.numpy(),
        top_threshold_first=np.float64(first),
        top_threshold_second=np.float64(float(top.threshold)),
        top_inference_codes=inference.detach().numpy(),
    )
    np.savez(out, **arrays)
    print(f"wrote {out}: {len(arrays)} arrays")


if __name__ == "__main__":
    default = Path(__file__).parents[1] / "fixtures" / "crosscoder_reference.npz"
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else str(default))
