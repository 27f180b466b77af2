"""Check the Keras EfficientNet-Lite0 (captioning/efficientnet.py) against PyTorch, once.

Two steps in two environments, so that torch never enters the project's virtualenv:

1. ``.venv/bin/python bench/efficientnet_reference.py keras OUT.npz PHOTO...``: preprocesses the
   photos (``efficientnet.preprocess_image``), runs the converted Keras model (``var/models``, made by
   ``prepare_models``), saves inputs + logits.
2. ``/work/scratch/bin/python bench/efficientnet_reference.py torch OUT.npz PTH``: in a scratch venv
   with torch (and NumPy), ``torch.load`` s the wheel's state dict, runs an independent PyTorch
   EfficientNet-Lite0 on the same inputs (TF-style static same padding, as the PyTorch port
   does) and prints top-1 agreement and the largest logit difference relative to the largest logit.

The figures are recorded in the model card (captioning/models/current/MODEL_CARD.md).
"""

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def keras_side(out: str, photos: list[str]) -> None:
    sys.path.insert(0, str(REPO))
    from captioning import efficientnet
    from captioning.features import load_classifier

    model = load_classifier(REPO / "var" / "models")
    inputs = np.stack([efficientnet.preprocess_image(p) for p in photos])
    logits = model.predict(inputs, verbose=0)
    np.savez(out, inputs=inputs, logits=logits, photos=np.array(photos))
    print(f"wrote {out}: {len(photos)} photos")


def torch_side(out: str, pth: str) -> None:
    import torch
    import torch.nn.functional as F

    state = torch.load(pth, map_location="cpu", weights_only=True)
    data = np.load(out)
    x = torch.from_numpy(data["inputs"]).permute(0, 3, 1, 2).contiguous()

    def same_conv(x, weight, stride, groups=1):
        kh, kw = weight.shape[2:]
        ih, iw = x.shape[2:]
        ph = max((-(-ih // stride) - 1) * stride + kh - ih, 0)
        pw = max((-(-iw // stride) - 1) * stride + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, weight, None, stride, 0, 1, groups)

    def bn(x, name):
        return F.batch_norm(x, state[f"{name}.running_mean"], state[f"{name}.running_var"],
                            state[f"{name}.weight"], state[f"{name}.bias"], False, 0.0, 1e-3)

    stages = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
              (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
    with torch.no_grad():
        h = F.relu6(bn(same_conv(x, state["_conv_stem.weight"], 2), "_bn0"))
        i, channels = 0, 32
        for repeats, _kernel, stride, expansion, filters in stages:
            for r in range(repeats):
                b, s = f"_blocks.{i}", stride if r == 0 else 1
                y = h
                if expansion != 1:
                    y = F.relu6(bn(same_conv(y, state[f"{b}._expand_conv.weight"], 1), f"{b}._bn0"))
                dw = state[f"{b}._depthwise_conv.weight"]
                y = F.relu6(bn(same_conv(y, dw, s, groups=dw.shape[0]), f"{b}._bn1"))
                y = bn(same_conv(y, state[f"{b}._project_conv.weight"], 1), f"{b}._bn2")
                h = h + y if s == 1 and channels == filters else y
                channels, i = filters, i + 1
        h = F.relu6(bn(same_conv(h, state["_conv_head.weight"], 1), "_bn1"))
        logits = F.linear(h.mean((2, 3)), state["_fc.weight"], state["_fc.bias"]).numpy()

    keras_logits = data["logits"]
    rel = np.abs(keras_logits - logits).max(axis=1) / np.abs(logits).max(axis=1)
    same_top1 = keras_logits.argmax(1) == logits.argmax(1)
    print(f"torch {torch.__version__}; {len(logits)} photos")
    for photo, r, same, k in zip(data["photos"], rel, same_top1, logits.argmax(1)):
        print(f"  {photo}: top-1 {k} {'equal' if same else 'DIFFERENT'}, max |diff| / max |logit| = {r:.2e}")
    print(f"top-1 equal on {int(same_top1.sum())}/{len(logits)}; largest relative difference {rel.max():.2e}")


if __name__ == "__main__":
    if sys.argv[1] == "keras":
        keras_side(sys.argv[2], sys.argv[3:])
    else:
        torch_side(sys.argv[2], sys.argv[3])
