"""Training throughput (samples/s) of vlnb's from-scratch ViT-B/32 CLIP against open_clip's, side by side.

Both models have OpenAI's ViT-B/32 CLIP shape (224 px, 32 px patches, 768x12 image / 512x12 text
transformers, 77 tokens, 49,408-token BPE vocabulary, 512-d space), random weights, and train on the *same*
batch: seeded random pixels and real COCO captions tokenised by the real CLIP tokenizer, padded to 77 tokens.

- vlnb: ``ScratchDualEncoder.create("vit_b32")`` and one optimizer step of vlnb's trainer
  (``vlnb.train.trainer._Trainer``: symmetric InfoNCE, PyTorch's fused AdamW kernel without decay on
  norms/biases/embeddings/scale, gradient clipping, logit-scale clamp, bf16 autocast on CUDA). A second vlnb row
  pads to the longest caption of the batch, as ``train_contrastive`` does, instead of to 77.
- open_clip: ``open_clip.create_model("ViT-B-32")`` and the step of ``open_clip_train`` (``--precision
  amp_bf16`` on CUDA): ``ClipLoss``, AdamW with the same groups (no decay on ndim < 2, biases, norms, scale),
  the same clipping and clamp. Its AdamW is PyTorch's default kernel, as in ``open_clip_train``: per tensor on a
  CPU (a chain of element-wise ops, each with a temporary as large as the tensor), ``foreach`` on CUDA. That
  kernel is most of the difference on a CPU: the models' forward and backward passes cost the same.

open_clip is only for this benchmark, never a vlnb dependency: ``pip install open_clip_torch --no-deps``
(it must not pull a CUDA torch in). Its package imports torchvision (transforms, FrozenBatchNorm2d) and ftfy
(text cleaning) at import time; neither is used by its model or loss, so when they are missing the script
imports open_clip with inert stand-ins for them (said in the output; torch/transformers are imported first,
so nothing else sees the stand-ins). Without open_clip at all it says so and measures vlnb alone.

Timing: after ``--warmup`` untimed steps each, ``--repeats`` repeats alternate the implementations (vlnb,
open_clip, vlnb-longest, then the next repeat in rotated order, ...), each timing ``--steps`` steps. The
output gives, per implementation, the median step time with its interquartile range and min-max, and the
vlnb/open_clip throughput ratio computed *within each repeat* (so a slow phase of a busy machine hits both
sides), as a median with its IQR and min-max: one run gives the ratio and its noise. The headline ratio is
at equal token length (77 on both sides). On a CPU the ratio is also given in process CPU time, which other
jobs on a shared machine do not inflate (use one thread: ``--threads 1``, the default there).

    python benchmarks/train_throughput.py --device cuda --batch-size 256 --steps 5 --repeats 10
    python benchmarks/train_throughput.py --device cpu --batch-size 8 --steps 1 --repeats 15
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import sys
import time
import types

MISSING_OK = ("torchvision", "ftfy")  # imported by open_clip's package, unused by its model and loss


def _stub_module(name: str) -> types.ModuleType:
    class _Meta(type):
        def __getattr__(cls, attr):  # e.g. InterpolationMode.BICUBIC as a default argument
            if attr.startswith("__"):
                raise AttributeError(attr)
            return cls

    class Unavailable(metaclass=_Meta):
        def __init__(self, *a, **k):
            raise RuntimeError(f"{name} is not installed: this open_clip feature is unavailable in the benchmark")

    mod = types.ModuleType(name)
    mod.__path__ = []  # a package, so submodules can hang below it

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Unavailable

    mod.__getattr__ = __getattr__
    return mod


def import_open_clip():
    """``(open_clip module or None, note)``."""
    try:
        return importlib.import_module("open_clip"), "open_clip imported normally"
    except ModuleNotFoundError as e:
        root = (e.name or "").split(".")[0]
        if root == "open_clip":
            return None, "open_clip is not installed (pip install open_clip_torch --no-deps)"
        if root not in MISSING_OK:
            return None, f"open_clip cannot be imported: {e}"
    for k in [k for k in sys.modules if k == "open_clip" or k.startswith("open_clip.")]:
        del sys.modules[k]
    added, missing = [], {r for r in MISSING_OK if importlib.util.find_spec(r) is None}
    for name in ("torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
                 "torchvision.transforms.functional", "ftfy"):
        if name.split(".")[0] not in missing:
            continue
        sys.modules[name] = _stub_module(name)
        added.append(name)
        if "." in name:
            parent, child = name.rsplit(".", 1)
            setattr(sys.modules[parent], child, sys.modules[name])
    try:
        oc = importlib.import_module("open_clip")
    except Exception as e:  # noqa: BLE001
        return None, f"open_clip cannot be imported even with stand-ins for {sorted({a.split('.')[0] for a in added})}: {e}"
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return oc, f"open_clip imported with inert stand-ins for {sorted({a.split('.')[0] for a in added})} (not installed)"


def coco_captions(n: int) -> list[str]:
    from vlnb.paths import shared_data_dir

    path = shared_data_dir(required=True) / "coco-captions-val2017" / "captions_val2017.json"
    anns = json.loads(path.read_text())["annotations"]
    caps = [a["caption"].strip() for a in sorted(anns, key=lambda a: a["id"])]
    return [caps[i % len(caps)] for i in range(n)]


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


class VlnbStep:
    def __init__(self, model, cfg, device):
        from vlnb.train.distributed import DistInfo
        from vlnb.train.trainer import _Trainer

        self.model, self.tr = model, _Trainer(model, cfg, DistInfo(), device)

    def __call__(self, pixels, tokens, _oc_tokens) -> float:
        loss = self.tr.backward_step(pixels, tokens)
        self.tr.optimizer_step()
        return loss


class OpenClipStep:
    """``open_clip_train.train.train_one_epoch`` for one batch (accum_freq 1)."""

    def __init__(self, oc, model, args, device, amp):
        import torch

        self.torch, self.model, self.device, self.amp, self.grad_clip = torch, model, device, amp, args.grad_clip
        self.loss = oc.ClipLoss()

        def exclude(n, p):
            return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(
            [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
             {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": args.weight_decay}],
            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)

    def __call__(self, pixels, _tokens, oc_tokens) -> float:
        torch = self.torch
        self.opt.zero_grad()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.model(pixels, oc_tokens)
            loss = sum(self.loss(**out, output_dict=True).values())
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, norm_type=2.0)
        self.opt.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))
        return float(loss.detach())


def spread(values) -> tuple[float, float, float, float, float]:
    """``(median, first quartile, third quartile, min, max)`` of ``values`` (linear-interpolated quartiles)."""
    import statistics

    v = sorted(values)
    if len(v) == 1:
        return v[0], v[0], v[0], v[0], v[0]
    q1, q2, q3 = statistics.quantiles(v, n=4, method="inclusive")
    return q2, q1, q3, v[0], v[-1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per implementation and repeat")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
    ap.add_argument("--repeats", type=int, default=11, help="interleaved repeats (vlnb, open_clip, vlnb, ...): "
                    "medians and spreads are over these")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default 1 on CPU)")
    ap.add_argument("--lr", type=float, default=1e-5, help="small, so that the repeated batch's loss falls "
                    "(a sanity check that both steps descend; speed does not depend on it)")
    ap.add_argument("--weight-decay", type=float, default=0.2)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--no-amp", action="store_true", help="float32 on CUDA too (default there: bf16 autocast)")
    ap.add_argument("--no-open-clip", action="store_true", help="measure vlnb only")
    ap.add_argument("--no-longest", action="store_true", help="skip the vlnb pad-to-longest row (a third model)")
    args = ap.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    import transformers  # noqa: F401 -- before any stand-in exists, so its availability checks see the truth

    from vlnb.models.scratch import ScratchDualEncoder
    from vlnb.train import TrainConfig

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = args.threads or (1 if device.type == "cpu" else torch.get_num_threads())
    torch.set_num_threads(threads)
    amp = device.type == "cuda" and not args.no_amp
    b = args.batch_size
    if b < 2 or args.steps < 1 or args.warmup < 1 or args.repeats < 1:
        raise SystemExit("--batch-size must be >= 2 (contrastive loss); --steps, --warmup, --repeats >= 1")

    vlnb_model = ScratchDualEncoder.create("vit_b32", seed=0).to(device).train()
    cfg = TrainConfig(batch_size=b, lr=args.lr, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
                      amp=amp, amp_dtype="bfloat16", device=str(device))
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(b, 3, 224, 224, generator=g).to(device)
    caps = coco_captions(b)
    tok = vlnb_model.tokenizer(caps, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    tokens77 = {"input_ids": tok["input_ids"].to(device), "attention_mask": tok["attention_mask"].to(device)}
    oc_tokens = (tok["input_ids"] * tok["attention_mask"]).to(device)  # open_clip pads with 0; EOT = argmax id
    tokens_longest = {k: v.to(device) for k, v in vlnb_model.tokenize(caps).items()}

    runs = {"vlnb (77 tokens)": (VlnbStep(vlnb_model, cfg, device), tokens77)}
    params = {"vlnb": n_params(vlnb_model)}
    oc, note = (None, "open_clip skipped (--no-open-clip)") if args.no_open_clip else import_open_clip()
    if oc is not None:
        torch.manual_seed(0)
        oc_model = oc.create_model("ViT-B-32", pretrained=None, device=device, precision="fp32",
                                   output_dict=True).train()
        params["open_clip"] = n_params(oc_model)
        runs["open_clip (77 tokens)"] = (OpenClipStep(oc, oc_model, args, device, amp), tokens77)
    if not args.no_longest:
        runs[f"vlnb (pad to longest: {tokens_longest['input_ids'].shape[1]} tokens)"] = (
            VlnbStep(ScratchDualEncoder.create("vit_b32", seed=0).to(device).train(), cfg, device), tokens_longest)

    gpu = f" {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"ViT-B/32 CLIP training step, {device}{gpu}, batch {b}, {'bf16 autocast' if amp else 'float32'}, "
          f"{threads} thread(s), torch {torch.__version__}")
    print("parameters: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in params.items()))
    print(note)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    loss_first = {}
    for name, (step, tokens) in runs.items():
        for _ in range(args.warmup):
            loss = step(pixels, tokens, oc_tokens)
            loss_first.setdefault(name, loss)
    names = list(runs)
    times, cpu_times, loss_after, peak = {k: [] for k in runs}, {k: [] for k in runs}, {}, {}
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate: no implementation always goes first
        for name in order:
            step, tokens = runs[name]
            if device.type == "cuda":
                sync()
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            t, c = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                loss_after[name] = step(pixels, tokens, oc_tokens)
            sync()
            times[name].append((time.perf_counter() - t) / args.steps)
            cpu_times[name].append((time.process_time() - c) / args.steps)
            if device.type == "cuda":
                peak[name] = max(peak.get(name, 0.0), (torch.cuda.max_memory_allocated(device) - base) / 2**20)
        print(f"  repeat {r + 1}/{args.repeats}: " + ", ".join(f"{n.split(' (')[0]}{'-longest' if 'longest' in n else ''} "
              f"{1000 * times[n][-1]:.0f} ms" for n in names), flush=True)
    ref = names[0]
    print(f"{args.repeats} interleaved repeats of {args.steps} step(s) each; step time median [IQR] (min-max):")
    for name in runs:
        med, q1, q3, lo, hi = spread(times[name])
        mem = f", peak +{peak[name]:.0f} MiB" if name in peak else ""
        print(f"  {name:40s}: {b / med:8.2f} samples/s  {1000 * med:8.1f} ms/step [{1000 * q1:.1f}-{1000 * q3:.1f}] "
              f"({1000 * lo:.1f}-{1000 * hi:.1f}){mem}; loss {loss_first[name]:.3f} -> {loss_after[name]:.3f} over "
              f"{args.warmup + args.repeats * args.steps} steps on this batch")
    # on a CPU the process's CPU time is the work done, whatever else the machine runs (wall time on a
    # shared machine also measures the scheduler); on CUDA only wall time means anything
    clocks = [("wall", times)] + ([("CPU time", cpu_times)] if device.type == "cpu" else [])
    if device.type == "cpu":
        print("  CPU time per step, median [IQR] (min-max): " + "; ".join(
            "{}: {:.1f} ms [{:.1f}-{:.1f}] ({:.1f}-{:.1f})".format(n, *(1000 * x for x in spread(cpu_times[n])))
            for n in names))
    for name in names[1:]:  # throughput ratio ref/name within each repeat = time(name) / time(ref)
        for clock, ts in clocks:
            med, q1, q3, lo, hi = spread([t / r for t, r in zip(ts[name], ts[ref])])
            print(f"  throughput {ref} / {name} ({clock}): median {med:.3f} [IQR {q1:.3f}-{q3:.3f}] "
                  f"(min-max {lo:.3f}-{hi:.3f}) over {args.repeats} paired repeats")
    print(f"  (chance loss for a batch of {b}: log {b} = {math.log(b):.3f})")


if __name__ == "__main__":
    main()
