"""Where a robustness sweep spends its time: perturbation vs image encoding, per batch, in the same run.

For each corruption the same batch of ``[0, 1]`` pixels (already decoded, resized and on the device) is
perturbed and then normalised + encoded by the image tower; both are timed (CUDA-synchronised), and the
share of the perturbation in their sum is printed. Decoding + resizing on the CPU is timed once, for
context (the sweep does it once per cell through the feature code's data loader).

Usage::

    python benchmarks/robustness_cost.py                                  # CPU, EfficientNet-Lite0 towers, 224 px
    python benchmarks/robustness_cost.py --device cuda --model clip-b32 --batch-size 256
    python benchmarks/robustness_cost.py --model scratch --batch-size 256  # the 64 px from-scratch ViT

Models: ``towers`` (EfficientNet-Lite0 + MiniLM, the offline reference architecture), ``clip-b32`` (the
exact CLIP ViT-B/32 image tower with random weights: speed does not depend on the weights),
``scratch`` (vlnb's tiny from-scratch ViT, 64 px). Images: coco-mini photos when the shared data is there,
otherwise smooth synthetic images of the same size.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

DEFAULT_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur",
                       "gaussian_blur", "brightness", "contrast", "jpeg_compression", "pixelate", "occlusion_random")


def _images(n: int) -> list[Image.Image]:
    try:
        from vlnb.paths import shared_data_dir

        files = sorted((shared_data_dir() / "coco-mini" / "val2017").glob("*.jpg"))
    except Exception:  # noqa: BLE001 -- no shared data on this machine
        files = []
    if files:
        return [Image.open(files[i % len(files)]).convert("RGB") for i in range(n)]
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)).resize((640, 480), Image.BICUBIC)
            for _ in range(n)]


class _ClipTower(torch.nn.Module):
    """CLIP ViT-B/32's image tower + projection (random weights) with its real preprocessing."""

    def __init__(self):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        from vlnb.models.transforms import ImagePreprocess

        cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                               patch_size=32, image_size=224, projection_dim=512)
        self.model = CLIPVisionModelWithProjection(cfg).eval()
        self.preprocess = ImagePreprocess(224, crop=224)

    def encode_image(self, pixels):
        return torch.nn.functional.normalize(self.model(pixel_values=pixels).image_embeds, dim=-1)


def _model(name: str, device: str):
    if name == "towers":
        from vlnb.models.towers import TowersDualEncoder

        m = TowersDualEncoder(name="bench", embed_dim=256, head="linear", freeze_towers=True)
    elif name == "clip-b32":
        m = _ClipTower()
    elif name == "scratch":
        from vlnb.models.scratch import ScratchDualEncoder

        m = ScratchDualEncoder.create("tiny", captions=["a red circle"], seed=0)
    else:
        raise SystemExit(f"unknown --model {name!r}: towers | clip-b32 | scratch")
    return m.to(device).eval()


def _timed(fn, device: str, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="towers")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--corruptions", nargs="*", default=list(DEFAULT_CORRUPTIONS))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from vlnb.eval.features import autocast_for
    from vlnb.robustness import corruption

    model = _model(args.model, args.device)
    pre = model.preprocess
    imgs = _images(args.batch_size)
    t0 = time.perf_counter()
    x = pre.to_unit(imgs)
    decode_s = time.perf_counter() - t0
    x = x.to(args.device)
    ids = [f"img{i}" for i in range(len(x))]

    def encode(pixels):
        with torch.inference_mode(), autocast_for(model):
            return model.encode_image(pre.normalize(pixels))

    encode(x)  # warm-up (cudnn autotune, lazy init)
    enc_s, _ = _timed(lambda: encode(x), args.device, args.repeats)
    where = f"{args.device}" + ("" if args.device.startswith("cuda") else f", {torch.get_num_threads()} thread(s)")
    gpu = f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""
    print(f"model {args.model}, batch {len(x)} x {tuple(x.shape[1:])}, severity {args.severity}, {where}{gpu}")
    print(f"decode + resize on the CPU (once per batch, for context): {1000 * decode_s:.1f} ms")
    print(f"{'corruption':<20}{'perturb ms':>12}{'encode ms':>12}{'perturb share':>15}")
    shares = []
    for name in args.corruptions:
        p = corruption(name, args.severity, seed=0)
        p(x[:2], ids=ids[:2])  # warm-up
        per_s, y = _timed(lambda p=p: p(x, ids=ids), args.device, args.repeats)
        enc_c, _ = _timed(lambda y=y: encode(y), args.device, args.repeats)
        share = per_s / (per_s + enc_c)
        shares.append(share)
        print(f"{name:<20}{1000 * per_s:>12.1f}{1000 * enc_c:>12.1f}{100 * share:>14.1f}%")
    print(f"clean encode: {1000 * enc_s:.1f} ms per batch; perturbation share: median {100 * statistics.median(shares):.1f}%, "
          f"max {100 * max(shares):.1f}%")


if __name__ == "__main__":
    main()
