"""The extractor: preprocessed images -> feature vector, style vector and packed mask."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, MissingExtraError, install_hint
from ..models import create_backbone, state_fingerprint
from ..models.baseline_segmenter import OtsuSegmenter
from ..models.device import runtime_device
from ..models.ensemble import (
    EnsembleFeatureNet,
    PooledFeatureNet,
    default_ensemble_path,
    load_ensemble,
    melanoma_probability,
)
from ..models.learned_segmenter import LearnedSegmenter, default_segmenter_path
from ..models.normalization import NORMALISATIONS
from ..names import BACKBONE_INITS, BACKENDS
from ..runtime import Runtime
from .config import LEARNED_GRAM_WEIGHTS, PAPER_STYLE, PREPROCESS_VERSION, ExtractorConfig
from .encoder import Prepared, finish_masks, pool_masks, prepare_image, stack_fields
from .gram import (
    average_grams,
    gram_channels,
    layer_weights,
    normalise_grams,
    style_dim,
    style_layout,
    style_vector,
)
from .onnx import OnnxRuntimeBackend, export_onnx
from .ort import export_directory, onnx_available, onnx_export_available
from .vectors import Vectors

__all__ = ["ExtractorConfig", "Extractor", "PAPER_STYLE", "Vectors", "PREPROCESS_VERSION", "BACKENDS",
           "resolve_gram_weights", "LEARNED_GRAM_WEIGHTS"]


def resolve_gram_weights(config: ExtractorConfig, tap_channels, network: str | None = None,
                         style_network: str | None = None) -> list[float]:
    """β per stored Gram for ``config.gram_weights``: a named scheme, ``learned`` (the weights
    fitted for the packaged model) or a JSON file written by ``dermsearch fit-gram-weights``.
    A file must describe the same pooling and channels as ``config`` and, when it names the
    network it was fitted for and ``network`` (the feature network's state fingerprint) is
    given, that same network."""
    chans = gram_channels(tap_channels, config.gram_pool)
    scheme = config.gram_weights
    if scheme in ("inverse-channels", "ones"):
        return layer_weights(chans, scheme)
    path = LEARNED_GRAM_WEIGHTS if scheme == "learned" else Path(scheme)
    if scheme != "learned" and path.suffix != ".json":
        raise ConfigError(f"unknown gram weighting {scheme!r}; valid: inverse-channels, ones, learned, or a .json "
                         "file of fitted weights")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read gram weights ({e})") from e
    betas = doc.get("betas")
    want = {"gram_pool": config.gram_pool, "gram_margin": config.gram_margin, "gram_norm": config.gram_norm,
            "tap_channels": list(tap_channels), "colour": config.resolved().colour}
    got = {k: doc.get(k, "none" if k in ("gram_norm", "colour") else None) for k in want}
    if got != want:
        raise ConfigError(f"{path}: these gram weights were fitted for {got}, not for this model's {want}")
    # Grams come from the members alone: a file naming the members it was fitted for ("style_network")
    # stays valid when only the ensemble's Dense layer or head change; older files name the whole network
    if style_network is not None and doc.get("style_network") is not None:
        if doc["style_network"] != style_network:
            raise ConfigError(f"{path}: these gram weights were fitted for other member networks "
                             f"({str(doc['style_network'])[:16]}), not these ({style_network[:16]}); use "
                             "inverse-channels or fit weights for this model with 'dermsearch fit-gram-weights'")
    elif network is not None and doc.get("network") not in (None, network):
        raise ConfigError(f"{path}: these gram weights were fitted for another feature network "
                         f"({str(doc['network'])[:16]}), not this one ({network[:16]}); use inverse-channels "
                         "or fit weights for this model with 'dermsearch fit-gram-weights'")
    if (not isinstance(betas, list) or len(betas) != len(chans)
            or not all(isinstance(b, (int, float)) and b >= 0 for b in betas) or not any(b > 0 for b in betas)):
        raise ConfigError(f"{path}: 'betas' must be {len(chans)} non-negative numbers, not all zero")
    return [float(b) for b in betas]


class Extractor:
    """Builds the networks of an :class:`ExtractorConfig` and extracts batches of images."""

    def __init__(self, config: ExtractorConfig | None = None, runtime: Runtime | None = None):
        """``runtime``: where and how the networks run (device, threads, backend; default
        ``Runtime()``). It changes no vector beyond float rounding, so it is not in the fingerprint."""
        self.config = config = (config or ExtractorConfig()).resolved()   # colour "auto" made concrete
        self.runtime = runtime = runtime or Runtime()
        self.device = runtime_device(runtime)
        self.net = self._build(config).eval()
        first = self.net.members[0]
        self.tap_channels: tuple[int, ...] = tuple(first.out_channels)
        self.gram_channels = gram_channels(self.tap_channels, config.gram_pool)
        spec = getattr(self.net, "spec", None)
        self.tta = config.tta or (int((spec.train or {}).get("tta", 1)) if spec is not None else 1)
        self.network_fingerprint = state_fingerprint(self.net)
        self.style_fingerprint = state_fingerprint(self.net.members)   # what the Grams depend on
        self.betas = (resolve_gram_weights(config, self.tap_channels, self.network_fingerprint, self.style_fingerprint)
                      if config.style else [])
        self.style_layout = style_layout(self.tap_channels, config.gram_pool, self.betas) if config.style else []
        self.feature_dim = self.net.feature_dim
        self.style_dim = style_dim(self.gram_channels) if config.style else 0
        self.mask_bytes = config.mask_size**2 // 8 if config.masks else 0
        mean, std = NORMALISATIONS[config.resolved_normalization]
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._segmenter = self._build_segmenter(config, self.device) if config.masks else None
        self.fingerprint = self._fingerprint()
        backend = runtime.backend
        if backend == "auto":   # ONNX Runtime on CPU, when the model is exported or can be
            exportable = onnx_export_available() or (export_directory(self.fingerprint) / "onnx.json").is_file()
            backend = "onnx" if self.device.type == "cpu" and onnx_available() and exportable else "torch"
        if backend == "onnx" and not onnx_available():
            raise MissingExtraError("backend 'onnx' needs onnxruntime, a dependency of dermsearch missing here: "
                                    f"{install_hint('onnx')}; or use the torch backend")
        self.backend = backend
        self._ort = None
        if backend == "torch":
            self.net.to(self.device)
            self._mean, self._std = self._mean.to(self.device), self._std.to(self.device)

    @property
    def ort(self):
        """The ONNX Runtime sessions (exported to the cache on first use), for backend 'onnx'."""
        if self._ort is None:
            self._ort = OnnxRuntimeBackend(export_onnx(self), self.runtime.threads, str(self.device))
        return self._ort

    @staticmethod
    def _build(cfg: ExtractorConfig) -> torch.nn.Module:
        torch.manual_seed(cfg.seed)
        if cfg.feature == "pooled":
            if cfg.weights == "imagenet":
                backbone = create_backbone(cfg.backbone, "imagenet")
            elif cfg.weights == "random":
                backbone = create_backbone(cfg.backbone)
            else:
                backbone = create_backbone(cfg.backbone, cfg.weights)
            return PooledFeatureNet(backbone)
        if cfg.weights in BACKBONE_INITS:
            # an untrained ensemble (ImageNet or random members, random Dense): for experiments only
            members = [create_backbone(cfg.backbone, "imagenet" if cfg.weights == "imagenet" else None)
                       for _ in range(cfg.members)]
            for m in members:
                m.classifier = None
            return EnsembleFeatureNet(members, cfg.feature_dim)
        path = default_ensemble_path() if cfg.weights == "default" else Path(cfg.weights)
        net, spec = load_ensemble(path)
        diff = cfg.description().differences(spec.description())
        if diff and cfg.weights == "default":
            raise ConfigError(f"the packaged ensemble is not the one these settings describe (settings, packaged): "
                             f"{diff}; an index built with an earlier release's packaged model must be rebuilt "
                             "with this one, into a new directory")
        if diff:
            raise ConfigError(f"{path}: the settings disagree with the trained ensemble (config, file): {diff}; "
                             "use ExtractorConfig.for_weights() to read them from the file")
        net.spec = spec
        return net

    @staticmethod
    def _build_segmenter(cfg: ExtractorConfig, device: torch.device) -> OtsuSegmenter | LearnedSegmenter:
        if cfg.segmenter == "otsu":
            return OtsuSegmenter()
        return LearnedSegmenter(default_segmenter_path() if cfg.segmenter == "default" else Path(cfg.segmenter),
                                device)

    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        settings = self.config.to_dict()
        if settings["gram_pool"] == "image":    # the paper's Grams hash as before these options existed
            del settings["gram_pool"], settings["gram_margin"]
        if settings["gram_norm"] == "none":
            del settings["gram_norm"]
        if settings["colour"] == "none":         # indexes from before the option hash as before
            del settings["colour"]
        if not settings["fov"]:                  # whole-frame pooling: indexes from before the option hash as before
            del settings["fov"]
        if not settings["max_side"]:             # no resolution cap: indexes from before the option hash as before
            del settings["max_side"]
        settings["tta"] = self.tta               # "auto" hashes as what it resolves to
        if self.tta == 1:
            del settings["tta"]
        h.update(json.dumps(settings, sort_keys=True).encode())
        h.update(f"preprocess={PREPROCESS_VERSION}".encode())
        if self.config.gram_weights not in ("inverse-channels", "ones"):   # a file: what counts is its numbers
            h.update(json.dumps([round(b, 12) for b in self.betas]).encode())
        h.update(self.network_fingerprint.encode())
        if isinstance(self._segmenter, LearnedSegmenter):
            h.update(state_fingerprint(self._segmenter.model).encode())
        return h.hexdigest()[:16]

    @property
    def has_head(self) -> bool:
        """True for a trained ensemble file: its classification head is kept for the head AUC."""
        return getattr(self.net, "spec", None) is not None and getattr(self.net, "head", None) is not None

    @torch.inference_mode()
    def melanoma_probability(self, features: np.ndarray) -> np.ndarray:
        """P(melanoma) from stored feature vectors through the trained ensemble's head."""
        if not self.has_head:
            raise ConfigError("this extractor's model has no trained classification head")
        logits = self.net.head(torch.from_numpy(np.asarray(features, dtype=np.float32)).to(self.device))
        return melanoma_probability(logits, self.net.spec).cpu().numpy()

    def prepare(self, image: Image.Image) -> Prepared:
        """Resize one decoded image for the networks: pixels at the model's size, pixels at the
        segmenter's size or None, its field of view or None (:class:`~dermsearch.extract.encoder.Prepared`).
        Thread-safe: the index build runs it in its decode threads, in parallel with inference."""
        seg_size = None
        if self._segmenter is not None:
            seg_size = self._segmenter.input_size or self.config.mask_size
        return prepare_image(image, self.config.image_size, self.config.colour, seg_size, self.config.fov,
                             self.config.max_side)

    def _normalised(self, pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(pixels).to(self.device).permute(0, 3, 1, 2).float()
        return (x - self._mean) / self._std

    def extract(self, images: list[Image.Image]) -> Vectors:
        """Extract a batch of decoded RGB images."""
        if not images:
            raise ConfigError("no images to extract")
        return self.extract_prepared([self.prepare(img) for img in images])

    @torch.inference_mode()
    def extract_prepared(self, prepared: list[Prepared]) -> Vectors:
        """Extract a batch of :meth:`prepare` outputs."""
        if not prepared:
            raise ConfigError("no images to extract")
        pixels = np.stack([p[0] for p in prepared])
        masks = areas = raw = None
        if self._segmenter is not None:    # first: lesion-aware Grams pool over these masks
            ms = self.config.mask_size
            seg_in = np.stack([p[1] for p in prepared])
            if self.backend == "onnx" and self.ort.segmenter is not None:
                raw = self.ort.segment(seg_in)
            else:
                raw = self._segmenter.segment_batch(seg_in)
            masks, areas = finish_masks(raw, ms)
        pool = self.pool_masks(raw) if self.config.style and self.config.gram_pool != "image" else None
        fields = stack_fields(prepared) if self.config.fov else None
        if self.config.fov and fields is None:
            raise ConfigError("this model pools over the field of view: prepare the images with Extractor.prepare")
        if self.backend == "onnx":
            features, styles = self.ort.features(pixels, pool, fields)
            features = np.ascontiguousarray(features, dtype=np.float32)
        else:
            x = self._normalised(pixels)
            field = None if fields is None else torch.from_numpy(fields).to(self.device)
            out = self.net(x, views=self.tta, field=field) if self.tta > 1 else self.net(x, field=field)
            features = out.feature.float().cpu().numpy().astype(np.float32, copy=False)
            styles = None
            if self.config.style:
                grams = average_grams(out.member_taps, None if pool is None else torch.from_numpy(pool).to(self.device),
                                      self.config.gram_pool, self.config.gram_margin, field)
                styles = style_vector([g.cpu() for g in normalise_grams(grams, self.config.gram_norm)], self.betas)
        return Vectors(features, styles, masks, areas)

    def pool_masks(self, raw: np.ndarray) -> np.ndarray:
        """The segmenter's masks [B, s, s] as 0/1 float32 [B, 1, S, S] at the model's input size."""
        return pool_masks(raw, self.config.image_size)
