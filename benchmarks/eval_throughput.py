"""End-to-end evaluation throughput (decode -> preprocess -> encode) against model-only throughput, one run.

End to end is the real data path of the chapters, :func:`vlnb.eval.features.image_features` on a manifest of
image files, twice: with the decoded-pixel cache **cold** (fresh cache folder, so nothing is reused: JPEG/PNG
decoding and the model's own resize/crop in ``--num-workers`` threads into the uint8 pixel cache, copy to the
device, normalisation and encoding there) and **warm** (fresh feature cache, the pixels decoded by an earlier
run: what every later evaluation of the same images gets). Model only is ``model.encode_image`` on the
same images decoded and preprocessed beforehand and already on the device, under the same inference mode and
autocast. Goal: end to end >= 80% of model only. Also printed: the decode+preprocess rate alone (one process),
the same DataLoader as end to end without the model (the data path's ceiling), the per-call fixed cost (the weight fingerprint that keys the cache) and the largest difference between the
two paths' embeddings (they must agree: same pixels, same model).

Default model: a ``CLIPModel`` built from the real ``openai/clip-vit-base-patch32`` config in the shared data
folder (real ViT-B/32 architecture, real tokenizer and preprocessing, random weights: right for speed).

    python benchmarks/eval_throughput.py --device cuda --batch-size 256 --n-images 5000 --num-workers 8
    python benchmarks/eval_throughput.py --device cpu --batch-size 16 --n-images 64 --num-workers 1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def default_model(device: str):
    """ViT-B/32 CLIP from the real config (random weights) behind vlnb's CLIP adapter."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast

    from vlnb.models.clip import CLIPAdapter
    from vlnb.models.transforms import ImagePreprocess
    from vlnb.paths import shared_data_dir

    d = shared_data_dir(required=True) / "clip-vit-base-patch32"
    model = CLIPModel(CLIPConfig.from_pretrained(str(d)))
    return CLIPAdapter(model, CLIPTokenizerFast.from_pretrained(str(d)), ImagePreprocess.from_hf(d),
                       "clip-vit-base-patch32 (config only, random weights)").to(device).eval()


def image_manifest(folder: Path, n: int):
    """A manifest of ``n`` rows cycling through the folder's images (sorted), one distinct id per row."""
    from vlnb.data.manifest import make_manifest

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {folder}")
    rows = [{"image_id": i, "image": str(files[i % len(files)]), "split": "bench"} for i in range(n)]
    return make_manifest(rows, name="eval-throughput"), len(files)


def sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="hub id or local folder (vlnb.models.load_model); "
                    "default: ViT-B/32 CLIP from the real config with random weights")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n-images", type=int, default=512)
    ap.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: cores - 1, max 8)")
    ap.add_argument("--images", type=Path, default=None, help="folder of JPEG/PNG files (default: coco-mini val2017)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the main process (default 1 on CPU)")
    ap.add_argument("--repeats", type=int, default=2, help="timed repetitions of each path (best is reported)")
    args = ap.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from vlnb.eval.features import autocast_for, image_features
    from vlnb.paths import shared_data_dir

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = args.threads or (1 if device.type == "cpu" else torch.get_num_threads())
    torch.set_num_threads(threads)
    workers = args.num_workers if args.num_workers is not None else max(0, min(8, (os.cpu_count() or 1) - 1))
    folder = args.images or shared_data_dir(required=True) / "coco-mini" / "val2017"
    if args.batch_size < 1 or args.n_images < 1:
        raise SystemExit("--batch-size and --n-images must be >= 1")

    if args.model:
        from vlnb.models import load_model

        model = load_model(args.model, device=device)
    else:
        model = default_model(str(device))
    if getattr(model, "kind", "") != "dual":
        raise SystemExit(f"{args.model}: a dual encoder is needed (encode_image), got kind {model.kind!r}")
    manifest, n_files = image_manifest(folder, args.n_images)
    pre = model.preprocess
    bs = args.batch_size
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    print(f"model {model.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params), {device} {gpu}, "
          f"batch {bs}, {args.n_images} images ({n_files} distinct files in {folder}), "
          f"{workers} worker(s), {threads} main thread(s), precision "
          f"{'bf16 autocast' if device.type == 'cuda' else 'float32'}")

    # ------------------------------------------------------------------ data path alone, in this process
    from vlnb.data.images import open_rgb

    t = time.perf_counter()
    pixels = torch.cat([pre([open_rgb(src)]) for src in manifest["image"]])
    t_data = time.perf_counter() - t

    # ------------------------------------------------------------------ model only: tensors already on the device
    on_device = pixels.to(device)
    with torch.inference_mode(), autocast_for(model):
        model.encode_image(on_device[:bs])  # warm-up (kernels, allocator)
    sync(device)
    t = time.perf_counter()
    model.fingerprint()
    t_fp = time.perf_counter() - t

    def model_only():
        with torch.inference_mode(), autocast_for(model):
            out = [model.encode_image(on_device[a : a + bs]) for a in range(0, len(on_device), bs)]
        return torch.cat(out)

    def end_to_end():  # the chapters' image_features, fresh cache folder each time: the pixel cache is cold
        with tempfile.TemporaryDirectory() as cache:
            return image_features(model, manifest, batch_size=bs, cache_dir=cache, num_workers=workers, progress=False)

    warm_dir = tempfile.TemporaryDirectory()
    image_features(model, manifest, batch_size=bs, cache_dir=warm_dir.name, num_workers=workers, progress=False)

    def end_to_end_warm():  # fresh feature cache, pixels decoded before (<cache>/pixels kept), a new process
        from vlnb.data.pixels import clear_memo

        for f in Path(warm_dir.name).iterdir():
            if f.is_file():
                f.unlink()  # the embeddings: recomputed
        clear_memo()
        return image_features(model, manifest, batch_size=bs, cache_dir=warm_dir.name, num_workers=workers,
                              progress=False)

    def loader_only():  # image_features' own DataLoader (decode + preprocess in the workers), no model
        from vlnb.eval.features import ImageDataset, _collate, _splits_uint8

        mode = "uint8" if _splits_uint8(pre) else "full"
        loader = torch.utils.data.DataLoader(
            ImageDataset(list(manifest["image"]), pre, mode), batch_size=bs, num_workers=workers,
            collate_fn=_collate, pin_memory=device.type == "cuda")
        return sum(len(idx) for idx, _, _ in loader)

    # the paths alternate, best of --repeats each, so a busy machine slows them alike
    t_model = t_e2e = t_loader = t_warm = float("inf")
    for _ in range(args.repeats):
        for which in ("model", "e2e", "loader", "warm"):
            sync(device)
            t = time.perf_counter()
            res = {"model": model_only, "e2e": end_to_end, "loader": loader_only, "warm": end_to_end_warm}[which]()
            sync(device)
            dt = time.perf_counter() - t
            if which == "model":
                t_model, ref = min(t_model, dt), res.float().cpu()
            elif which == "e2e":
                t_e2e, fs = min(t_e2e, dt), res
            elif which == "warm":
                t_warm, fs_warm = min(t_warm, dt), res
            else:
                t_loader = min(t_loader, dt)
    if len(fs) != args.n_images:
        raise SystemExit(f"end to end encoded {len(fs)} of {args.n_images} images: {fs.skipped.to_dict('records')[:3]}")
    diff = max(float((fs.embeddings - ref).abs().max()), float((fs_warm.embeddings - ref).abs().max()))
    warm_dir.cleanup()

    n = args.n_images
    r_model, r_e2e, r_loop = n / t_model, n / t_e2e, n / max(t_e2e - t_fp, 1e-9)

    def line(label, rate, note=""):
        print(f"  {label:44s}: {rate:9.1f} images/s{note}")

    line("decode + preprocess alone (1 process)", n / t_data)
    line(f"data loader alone ({workers} worker(s), no model)", n / t_loader, "   (the ceiling of end to end)")
    line("model only (tensors on the device)", r_model)
    line("end to end, pixel cache cold (image_features)", r_e2e,
         f"   = {100 * r_e2e / r_model:.1f}% of model only (goal >= 80%)")
    r_warm = n / t_warm
    line("end to end, pixel cache warm", r_warm, f"   = {100 * r_warm / r_model:.1f}% of model only (goal >= 80%)")
    line("... less the per-call fingerprint", r_loop, f"   = {100 * r_loop / r_model:.1f}% (fingerprint {t_fp:.2f} s, "
         "once per model and manifest)")
    print(f"  max |embedding difference| between the paths: {diff:.2e}")


if __name__ == "__main__":
    main()
