"""Write open_clip's contrastive loss and its gradients on fixed inputs to ``tests/reference/open_clip_loss.json``.

open_clip is the reference implementation of CLIP training, but it cannot be a test dependency here:
``open_clip_torch`` requires torchvision, which has no working wheel beside the pinned CPU torch. So its
output is checked in instead, and ``tests/test_train.py::test_clip_loss_matches_open_clip_reference``
compares :func:`vlnb.train.loss.clip_loss` with it on every test run.

The reference comes from open_clip's own ``ClipLoss`` (one process: ``(CE(s * I @ T.T) + CE(s * T @ I.T)) /
2``), imported as the throughput benchmark does (:func:`train_throughput.import_open_clip`: with inert
stand-ins for torchvision/ftfy, which its loss never touches). open_clip takes the scale itself
(``logit_scale.exp()`` happens in its model's forward; ``open_clip_train`` clamps the log-scale to
``[0, log 100]`` after each step), so each case feeds ``exp(log_scale)`` with ``log_scale <= log 100``;
gradients are taken through that ``exp`` with respect to the log-scale, as a training step sees them.

Regenerate (and review the diff) after upgrading open_clip::

    pip install open_clip_torch==3.3.0 --no-deps   # with ftfy/timm optional
    python benchmarks/open_clip_reference.py             # writes the file
    python benchmarks/open_clip_reference.py --check     # compares a fresh run with the file, writes nothing
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "reference" / "open_clip_loss.json"
#: (batch, dim, log-scale, seed): CLIP's initial 1/0.07, the clamp at 100, scale 1, a batch of 2
CASES = [(8, 16, math.log(1 / 0.07), 0), (5, 4, math.log(100.0), 1), (16, 32, 0.0, 2), (2, 3, math.log(10.0), 3)]


def reference(oc) -> dict:
    import torch
    import torch.nn.functional as F

    loss_fn = oc.ClipLoss()
    cases = []
    for n, d, log_scale, seed in CASES:
        g = torch.Generator().manual_seed(seed)
        img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
        txt = F.normalize(img + 0.8 * torch.randn(n, d, generator=g), dim=-1)
        i, t = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
        ls = torch.tensor(log_scale, requires_grad=True)
        loss = loss_fn(i, t, ls.exp())
        loss.backward()
        cases.append({"batch": n, "dim": d, "log_scale": log_scale, "image": img.tolist(), "text": txt.tolist(),
                      "loss": loss.item(), "grad_image": i.grad.tolist(), "grad_text": t.grad.tolist(),
                      "grad_log_scale": ls.grad.item()})
    return {"generator": "benchmarks/open_clip_reference.py", "open_clip": oc.__version__,
            "torch": torch.__version__, "function": "open_clip.ClipLoss()(image, text, exp(log_scale))",
            "cases": cases}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the checked-in file instead of writing")
    args = p.parse_args(argv)
    import transformers  # noqa: F401 -- imported before the stand-ins, as the benchmark does

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_throughput import import_open_clip

    oc, note = import_open_clip()
    print(note)
    if oc is None:
        return 1
    ref = reference(oc)
    if args.check:
        old = json.loads(OUT.read_text())
        worst = max(abs(a["loss"] - b["loss"]) for a, b in zip(old["cases"], ref["cases"]))
        print(f"max |loss difference| against {OUT.name} (open_clip {old['open_clip']}): {worst:.2e}")
        return 0 if worst < 1e-6 else 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(ref, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({len(ref['cases'])} cases, open_clip {ref['open_clip']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
