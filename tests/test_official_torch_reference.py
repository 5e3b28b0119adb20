"""The benchmark's PyTorch reference computes the official numbers (so the speed comparison is
against the official math)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.reference.official_torch import OfficialUSAE, top_k_auxiliary_loss  # noqa: E402


def _states(parity, prefix, names):
    return [
        {k[len(f"{prefix}/{n}/") :]: v for k, v in parity.items() if k.startswith(f"{prefix}/{n}/")}
        for n in names
    ]


def test_reference_reproduces_official_forward_and_training(parity):
    torch.set_num_threads(1)
    meta = json.loads(str(parity["meta_json"]))
    names = meta["names"]
    usae = OfficialUSAE(
        meta["dims"], meta["concepts"], meta["topk"], lr=3e-3, total_iters=40, warmup_iters=6
    )
    usae.load(_states(parity, "init", names))
    batch0 = [torch.tensor(parity[f"data/0/{n}"]) for n in names]
    for i, source in enumerate(names):
        pre, codes = usae.models[i].encode(batch0[i])
        np.testing.assert_allclose(
            pre.detach(), parity[f"fwd/{source}/pre_codes"], rtol=1e-5, atol=1e-6
        )
        for j, target in enumerate(names):
            dictionary = usae.models[j].dictionary.get_dictionary()
            x_hat = codes @ dictionary
            np.testing.assert_allclose(
                x_hat.detach(), parity[f"fwd/{source}/{target}/x_hat"], rtol=1e-5, atol=1e-6
            )
            loss = top_k_auxiliary_loss(batch0[j], x_hat, pre, codes, dictionary)
            np.testing.assert_allclose(
                float(loss), parity[f"fwd/{source}/{target}/loss_l1_auxk"], rtol=1e-6
            )
    usae.load(_states(parity, "init", names))  # the forward check moved the BatchNorm buffers
    for step, pick in enumerate(parity["train/picks"]):
        batch = [torch.tensor(parity[f"data/{step}/{n}"]) for n in names]
        loss = usae.step(int(pick), batch)
        np.testing.assert_allclose(loss, parity["train/losses"][step], rtol=1e-6)
        for i, name in enumerate(names):
            lr = usae.optimizers[i].param_groups[0]["lr"]
            np.testing.assert_allclose(float(lr), parity[f"lr/{step}/{name}"], rtol=1e-6)
    for model, state in zip(usae.models, _states(parity, "final", names), strict=True):
        ours = model.state_dict()
        for key in (
            "dictionary._weights",
            "encoder.final_block.0.weight",
            "encoder.final_block.1.weight",
            "encoder.final_block.1.running_var",
        ):
            np.testing.assert_allclose(
                ours[key].numpy(), state[key], rtol=1e-5, atol=1e-6, err_msg=key
            )
