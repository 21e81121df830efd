"""`export-onnx`: an index's networks as ONNX files, with the contract a program needs to run them
without dermsearch (``preprocess.json``; docs/usage.md, "ONNX export")."""

from __future__ import annotations

import json
from pathlib import Path

from ..io import write_json

__all__ = ["export_index", "describe"]


def export_index(index, out: Path) -> dict:
    """Export ``index``'s model to ``out`` (a copy of the cached export when indexing made one, else
    a fresh export) and write ``preprocess.json``; returns the contract."""
    from ..extract.ort import check_export_folder, export_directory

    out = check_export_folder(out)          # never empties a folder that is not an earlier export
    cached = export_directory(index.fingerprint)
    if _complete_export(cached, index.fingerprint) and not (out / "onnx.json").is_file():
        _copy_export(cached, out)       # indexing on ONNX Runtime exported this very model already
    else:
        from ..extract import Extractor
        from ..extract.onnx import export_onnx

        extractor = Extractor(index.extractor_config)
        index.check_fingerprint(extractor.fingerprint, extractor.config)
        export_onnx(extractor, out)
    return _write_contract(out, index, json.loads((out / "onnx.json").read_text()))


def describe(contract: dict) -> str:
    """One line: what was written, the inputs and outputs of each graph."""
    s = contract["image_size"]
    ins = (["pixels [B,3,S,S] float32 RGB 0..255"]
           + (["masks [B,1,S,S] float32 0/1"] if contract["masks_input"] else [])
           + (["fields [B,1,S,S] float32 0/1"] if contract.get("fields_input") else []))
    outs = ", ".join(f"{k} {v.split(' ')[0]}" for k, v in contract["outputs"].items())
    seg = contract["segmenter_input_size"]
    return (f"exported model {contract['fingerprint']} to {contract['directory']}: extractor.onnx ({' + '.join(ins)}, "
            f"S={s}, colour {contract['colour']} -> {outs})"
            + (f"; segmenter.onnx (pixels [B,3,{seg},{seg}] float32 RGB 0..255, not colour-corrected -> logits "
               f"[B,1,{seg},{seg}]; mask = logits > 0)" if seg else "")
            + "; preprocessing: preprocess.json, docs/usage.md (ONNX export)")


def _complete_export(directory: Path, fingerprint: str) -> bool:
    from ..extract.config import PREPROCESS_VERSION

    try:
        info = json.loads((directory / "onnx.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("fingerprint") == fingerprint and info.get("preprocess_version") == PREPROCESS_VERSION


def _copy_export(source: Path, out: Path) -> None:
    """Copy a cached export to ``out`` atomically (a temporary folder renamed into place)."""
    import shutil

    from ..io import replace_dir, temp_dir_for

    tmp = temp_dir_for(out)
    shutil.copytree(source, tmp, dirs_exist_ok=True)
    replace_dir(tmp, out)


def _write_contract(out: Path, index, info: dict) -> dict:
    """``preprocess.json``: what a program needs, beside the graphs, to compute the index's vectors
    from an image file without dermsearch (docs/usage.md, "ONNX export")."""
    cfg = index.manifest["extractor"]
    seg = info.get("segmenter")
    contract = {
        "fingerprint": info["fingerprint"], "directory": str(out), "image_size": info["image_size"],
        "decode": "RGB (alpha composited on white), EXIF orientation applied",
        "max_side": int(cfg.get("max_side", 0)),
        "resize": "first, when max_side > 0 and the long side exceeds it: reduce to max_side on the long side, "
                  "aspect kept (each side max(1, round(side * max_side / long side)), Python's round: halves to "
                  "even; Pillow BILINEAR); then bilinear with antialiasing "
                  "(Pillow Image.resize, BILINEAR) to image_size x image_size",
        "colour": cfg.get("colour", "none"),
        "colour_formula": "shades-of-gray p=6 on the resized uint8 image: e_c = mean(x_c^6)^(1/6); "
                          "x_c * |e| / (sqrt(3) e_c), rounded, clipped to 0..255 (none: unchanged)",
        "pixels": "float32 [B,3,S,S], RGB, 0..255 (the graph normalises)",
        "masks_input": bool(info.get("masks_input")),
        "masks": ("segmenter mask (segmenter.onnx logits > 0 on the uncorrected image resized to its input_size), "
                  "nearest-neighbour resized to image_size, as float32 0/1 [B,1,S,S]") if info.get("masks_input")
        else None,
        "fields_input": bool(info.get("fields_input")),
        "fields": ("field of view of the uncorrected image resized to image_size: not the dark region (every channel "
                   "< 32 after a 5x5 median filter) joined to a corner of the frame, unless that region is under 1 % "
                   "or over 70 % of the frame (then all 1), as float32 0/1 [B,1,S,S]") if info.get("fields_input")
        else None,
        "segmenter_input_size": seg["input_size"] if seg else None,
        "stored_mask_size": cfg.get("mask_size") if cfg.get("masks", True) else None,
        "outputs": {"feature": f"[B,{index.manifest['feature_dim']}] float32",
                    **({"style": f"[B,{index.manifest['style_dim']}] float32, the weighted Grams' upper "
                                 "triangles (off-diagonal x sqrt 2): squared distance = the style loss"}
                       if "style" in info["outputs"] else {})},
    }
    write_json(out / "preprocess.json", contract, indent=2)
    return contract
