"""Single-file checkpoints: an export written as one original-layout (LDM) `.safetensors`, the file A1111 / ComfyUI
load and diffusers' `from_single_file` reads.

The U-Net goes under `model.diffusion_model.` with LDM numbering that follows the student's real layout
(`input_blocks.N` counts the layers and downsamplers the student has, `middle_block` is absent without a mid stage),
the VAE under `first_stage_model.`, the text encoder under `cond_stage_model.transformer.` (SD) or
`conditioner.embedders.0.transformer.` and `conditioner.embedders.1.model.` (SDXL's two, the second in OpenCLIP
layout). diffusers ships only the LDM -> diffusers direction (`diffusers.loaders.single_file_utils`); the inverse here
reuses its key tables, and every written state dict is converted back with diffusers' own converters and compared
tensor by tensor before the file is written, so a file is only written when diffusers reads it back exactly.

Students `from_single_file` cannot describe are refused with one line: `load_pruned`-only exports (compact weights
with substitutes, zeroed or dropped skips; width-pruned) have no stock config, and students whose stages keep
different numbers of layers (a list `layers_per_block`) fall outside diffusers' LDM converter, which numbers blocks
with one `layers_per_block`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..runtime.atomic import write_with
from ..runtime.validate import as_path
from . import model_dir, read_marker
from .card import update_card

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
#: Where each text encoder goes, by the pipeline attribute holding it: (prefix, layout).
TEXT_PREFIXES = {
    "StableDiffusionPipeline": {"text_encoder": ("cond_stage_model.transformer.", "clip")},
    "StableDiffusionXLPipeline": {
        "text_encoder": ("conditioner.embedders.0.transformer.", "clip"),
        "text_encoder_2": ("conditioner.embedders.1.model.", "openclip"),
    },
}
#: diffusers resnet names -> LDM ResBlock names (the inverse of `update_unet_resnet_ldm_to_diffusers`).
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
#: diffusers VAE attention names -> LDM AttnBlock names (the inverse of `update_vae_attentions_ldm_to_diffusers`).
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


# ------------------------------------------------------------------------------------------------------- U-Net
def _resnet_key(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET.get(head, head)}.{tail}"


def _unet_slots(unet) -> dict[str, str]:
    """diffusers module prefix -> LDM module prefix, for every block of `unet` in its real order."""
    slots, index = {}, 1
    for b, block in enumerate(unet.down_blocks):
        attentions = getattr(block, "attentions", None) or []
        for j in range(len(block.resnets)):
            slots[f"down_blocks.{b}.resnets.{j}."] = f"input_blocks.{index}.0."
            if j < len(attentions):
                slots[f"down_blocks.{b}.attentions.{j}."] = f"input_blocks.{index}.1."
            index += 1
        if block.downsamplers:
            slots[f"down_blocks.{b}.downsamplers.0.conv."] = f"input_blocks.{index}.0.op."
            index += 1
    if unet.mid_block is not None:
        for j in range(len(unet.mid_block.resnets)):
            slots[f"mid_block.resnets.{j}."] = f"middle_block.{2 * j}."
        for j in range(len(getattr(unet.mid_block, "attentions", None) or [])):
            slots[f"mid_block.attentions.{j}."] = f"middle_block.{2 * j + 1}."
    index = 0
    for b, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None) or []
        for j in range(len(block.resnets)):
            slots[f"up_blocks.{b}.resnets.{j}."] = f"output_blocks.{index}.0."
            if j < len(attentions):
                slots[f"up_blocks.{b}.attentions.{j}."] = f"output_blocks.{index}.1."
            index += 1
        if block.upsamplers:
            slot = 2 if attentions else 1
            slots[f"up_blocks.{b}.upsamplers.0.conv."] = f"output_blocks.{index - 1}.{slot}.conv."
    return slots


def unet_to_ldm(unet) -> dict:
    """The LDM state dict (keys without `model.diffusion_model.`) of a diffusers `UNet2DConditionModel`.

    Raises:
        ValueError: a tensor with no place in the LDM layout (a U-Net this format cannot describe).
    """
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    tables = DIFFUSERS_TO_LDM_MAPPING["unet"]
    flat = {**tables["layers"], **tables["class_embed_type"], **tables["addition_embed_type"]}
    slots = _unet_slots(unet)
    out = {}
    for key, value in unet.state_dict().items():
        if key in flat:
            out[flat[key]] = value
            continue
        prefix = next((p for p in slots if key.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"the U-Net tensor {key} has no place in the original (LDM) single-file layout")
        rest = key[len(prefix) :]
        out[slots[prefix] + (_resnet_key(rest) if ".resnets." in prefix else rest)] = value
    return out


# --------------------------------------------------------------------------------------------------------- VAE
def _vae_key(key: str, n_up: int) -> str:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    if key in DIFFUSERS_TO_LDM_MAPPING["vae"]:
        return DIFFUSERS_TO_LDM_MAPPING["vae"][key]
    part, block, *rest = key.split(".")
    if block == "mid_block":
        kind, j, *tail = rest
        if kind == "resnets":
            return ".".join([part, "mid", f"block_{int(j) + 1}", *tail]).replace("conv_shortcut", "nin_shortcut")
        name = ".".join(tail[:-1])
        return ".".join([part, "mid", "attn_1", _VAE_ATTENTION.get(name, name), tail[-1]])
    i, kind, j, *tail = rest
    level = int(i) if block == "down_blocks" else n_up - 1 - int(i)
    stage = "down" if block == "down_blocks" else "up"
    if kind == "resnets":
        return ".".join([part, stage, str(level), "block", j, *tail]).replace("conv_shortcut", "nin_shortcut")
    return ".".join([part, stage, str(level), "downsample" if stage == "down" else "upsample", *tail])


def vae_to_ldm(vae) -> dict:
    """The LDM state dict (keys without `first_stage_model.`) of a diffusers `AutoencoderKL`; the mid attention's
    linear weights become the 1x1 convolutions LDM stores."""
    n_up = len(vae.decoder.up_blocks)
    out = {}
    for key, value in vae.state_dict().items():
        ldm = _vae_key(key, n_up)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[ldm] = value
    return out


# -------------------------------------------------------------------------------------------------- text encoders
def clip_to_ldm(encoder) -> dict:
    """A transformers CLIP text encoder in the LDM `FrozenCLIPEmbedder` layout (`text_model.` keys)."""
    return {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in encoder.state_dict().items()}


def openclip_to_ldm(encoder) -> dict:
    """A transformers `CLIPTextModelWithProjection` in the OpenCLIP layout SDXL's second encoder has (q / k / v
    fused into `in_proj`, the projection transposed); the inverse of diffusers' `convert_open_clip_checkpoint`."""
    import torch
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    tables = DIFFUSERS_TO_LDM_MAPPING["openclip"]
    state, out = encoder.state_dict(), {}
    for key, ldm in tables["layers"].items():
        if key in state:
            out[ldm] = state[key].T.contiguous() if ldm == "text_projection" else state[key]
    for key, value in state.items():
        if not key.startswith("text_model.encoder.layers."):
            continue
        ldm = key
        for new, old in tables["transformer"].items():
            ldm = ldm.replace(new, old)
        ldm = "transformer." + ldm
        if ".q_proj." in ldm:
            parts = [state[key.replace(".q_proj.", f".{p}_proj.")] for p in "qkv"]
            out[ldm.replace("q_proj.", "in_proj_")] = torch.cat(parts, dim=0)
        elif ".k_proj." not in ldm and ".v_proj." not in ldm:
            out[ldm] = value
    return out


# ------------------------------------------------------------------------------------------------ the whole file
def _pipeline_layout(pipe) -> dict[str, tuple[str, str]]:
    name = "StableDiffusionXLPipeline" if getattr(pipe, "text_encoder_2", None) is not None else None
    return TEXT_PREFIXES[name or "StableDiffusionPipeline"]


def _check_writable(export_dir: Path) -> Path:
    """The U-Net folder of an export `from_single_file` can describe; ValueError (one line, naming why) if none."""
    folder = model_dir(export_dir)
    if not (folder / "config.json").is_file() and read_marker(folder) is None:
        raise FileNotFoundError(f"{export_dir} is not an export of `prunelab apply` (no unet/config.json)")
    marker = read_marker(folder)
    if marker is not None:
        raise ValueError(
            f"{export_dir} holds a student only prune_lab.load_pruned reads ({marker['format']}: no stock diffusers "
            "config describes it), so no single-file checkpoint can hold it; export a plan without substitutes, "
            "zeroed / dropped skips or width pruning"
        )
    from . import read_config

    cls, config = read_config(folder)
    if cls.__name__ != "UNet2DConditionModel":
        raise ValueError(f"{export_dir}: single-file checkpoints hold a UNet2DConditionModel, not a {cls.__name__}")
    if isinstance(config.get("layers_per_block"), list):
        raise ValueError(
            f"{export_dir}: the student keeps {config['layers_per_block']} layers per stage; the single-file (LDM) "
            "format's loaders number blocks with one layers_per_block, so it cannot be written as one file"
        )
    return folder


def check_plan_writable(teacher, plan) -> None:
    """Refuse, before anything is written, a plan whose student no single file can hold (see :func:`_check_writable`).

    Raises:
        ValueError: the student has no stock diffusers config, or keeps different numbers of layers per stage.
    """
    from ..backbones import build_student, instantiate

    config = {k: v for k, v in dict(teacher.config).items() if not k.startswith("_")}
    compacted = build_student(instantiate(type(teacher), config), plan)
    if not compacted.expressible:
        raise ValueError(
            "--single-file: this plan's student is one only prune_lab.load_pruned reads (no stock diffusers config "
            "describes it), so no single-file checkpoint can hold it; drop --single-file or use a plan without "
            "substitutes and zeroed / dropped skips"
        )
    if isinstance(compacted.config.get("layers_per_block"), list):
        raise ValueError(
            f"--single-file: the student keeps {compacted.config['layers_per_block']} layers per stage; the "
            "single-file (LDM) format's loaders number blocks with one layers_per_block; drop --single-file"
        )


def load_export_parts(export_dir: Path) -> dict:
    """The modules of an export by role (`unet`, `vae`, `text_encoder`, `text_encoder_2`), read with diffusers."""
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    if not (export_dir / "model_index.json").is_file():
        return {"unet": UNet2DConditionModel.from_pretrained(model_dir(export_dir)).eval()}
    pipe = DiffusionPipeline.from_pretrained(export_dir, local_files_only=True)
    names = ("unet", "vae", *_pipeline_layout(pipe))
    return {name: getattr(pipe, name).eval() for name in names if getattr(pipe, name, None) is not None}


def ldm_checkpoint(parts: dict) -> dict:
    """One LDM-layout state dict of `parts` (:func:`load_export_parts`), every key under its original prefix."""
    checkpoint = {UNET_PREFIX + k: v for k, v in unet_to_ldm(parts["unet"]).items()}
    if "vae" in parts:
        checkpoint.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(parts["vae"]).items()})
    layout = TEXT_PREFIXES["StableDiffusionXLPipeline" if "text_encoder_2" in parts else "StableDiffusionPipeline"]
    for role, (prefix, kind) in layout.items():
        if role in parts:
            state = clip_to_ldm(parts[role]) if kind == "clip" else openclip_to_ldm(parts[role])
            checkpoint.update({prefix + k: v for k, v in state.items()})
    return {k: v.detach().cpu().contiguous() for k, v in checkpoint.items()}


def _same(expected: dict, got: dict, what: str) -> None:
    import torch

    missing = sorted(k for k in expected if k not in got or got[k].is_meta)
    extra = sorted(set(got) - set(expected))
    both = [k for k in expected if k in got and not got[k].is_meta]
    wrong = sorted(k for k in both if not torch.equal(expected[k], got[k].to(expected[k])))
    if missing or extra or wrong:
        first = (missing or extra or wrong)[0]
        raise ValueError(
            f"diffusers does not read the single-file {what} back as written ({first}: "
            f"{len(missing)} missing, {len(extra)} extra, {len(wrong)} different tensors); this student cannot be "
            "written as one file"
        )


def verify_checkpoint(checkpoint: dict, parts: dict) -> None:
    """Convert `checkpoint` back with diffusers' own LDM converters and compare every tensor with `parts`.

    Raises:
        ValueError: a component diffusers would read differently (naming the first tensor).
    """
    from diffusers.loaders import single_file_utils as sfu

    unet = parts["unet"]
    _same(unet.state_dict(), sfu.convert_ldm_unet_checkpoint(checkpoint, dict(unet.config)), "U-Net")
    if "vae" in parts:
        vae = parts["vae"]
        _same(vae.state_dict(), sfu.convert_ldm_vae_checkpoint(checkpoint, dict(vae.config)), "VAE")
    layout = TEXT_PREFIXES["StableDiffusionXLPipeline" if "text_encoder_2" in parts else "StableDiffusionPipeline"]
    for role, (prefix, kind) in layout.items():
        if role not in parts:
            continue
        encoder = parts[role]
        if kind == "clip":
            back = sfu.convert_ldm_clip_checkpoint({k: v for k, v in checkpoint.items() if k.startswith(prefix)})
            _same(clip_to_ldm(encoder), back, role)
        else:
            _same(encoder.state_dict(), sfu.convert_open_clip_checkpoint(encoder, checkpoint, prefix=prefix), role)


#: safetensors metadata key that marks a file prune_lab wrote (so that --overwrite may replace it).
SINGLE_FILE_MARK = "prune_lab"


def _metadata(path: Path) -> dict:
    """The `__metadata__` of a safetensors file, read from its JSON header (nothing else is parsed); {} if none."""
    import json

    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if 0 < size < 100_000_000 else {}
    except (OSError, ValueError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def check_single_file_path(path: str | os.PathLike, *, overwrite: bool = False, flag: str = "path") -> Path:
    """Refuse a single-file destination before any work: not `.safetensors`, a folder, under a file, or an existing
    file that prune_lab did not write (or any existing file without `overwrite`).

    Raises:
        ValueError: a wrong suffix.
        FileExistsError: a folder there, a file where a parent folder should be, a file that may not be replaced.
    """
    path = as_path(path, flag)
    if path.suffix != ".safetensors":
        raise ValueError(f"{flag} {path}: a single-file checkpoint is a .safetensors file; end the name so")
    if path.is_dir():
        raise FileExistsError(f"{flag} {path} is a folder; give a file path ending in .safetensors")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise FileExistsError(f"{flag} {path}: {parent} is a file, not a folder; choose another {flag}")
            break
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{flag} {path} exists; pass --overwrite or choose another {flag}")
        if _metadata(path).get(SINGLE_FILE_MARK) != "single_file":
            raise FileExistsError(
                f"refusing to replace {path}: prune_lab did not write it; remove it yourself or choose another {flag}"
            )
    return path


def write_single_file(export_dir: str | os.PathLike, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the export at `export_dir` (U-Net, and VAE + text encoder(s) when it is a pipeline) as one LDM-layout
    `.safetensors` at `path`, atomically, after checking that diffusers' converters read it back exactly.

    Raises:
        FileNotFoundError: not an export folder.
        ValueError: a student the single-file format cannot hold (see the module docstring), a bad suffix.
        FileExistsError: `path` may not be written (:func:`check_single_file_path`).
    """
    from safetensors.torch import save_file

    export_dir = as_path(export_dir, "export_dir")
    path = check_single_file_path(path, overwrite=overwrite)
    _check_writable(export_dir)
    parts = load_export_parts(export_dir)
    checkpoint = ldm_checkpoint(parts)
    verify_checkpoint(checkpoint, parts)
    meta = {"format": "pt", SINGLE_FILE_MARK: "single_file", "export": str(export_dir)}
    write_with(path, lambda tmp: save_file(checkpoint, str(tmp), metadata=meta))
    update_card(export_dir, single_file=str(path))
    return path


def load_single_file(path: str | os.PathLike, export_dir: str | os.PathLike):
    """Read a single file back with diffusers' `from_single_file`, offline, its configs from `export_dir`: the
    pipeline class of `model_index.json`, else a `UNet2DConditionModel`."""
    import diffusers

    path, export_dir = Path(path), Path(export_dir)
    index = export_dir / "model_index.json"
    if not index.is_file():
        config = str(model_dir(export_dir))
        return diffusers.UNet2DConditionModel.from_single_file(str(path), config=config, local_files_only=True)
    from ..runtime.validate import need, read_json

    name = need(read_json(index, "pipeline index"), "_class_name", str, str(index))
    cls = getattr(diffusers, name)
    return cls.from_single_file(str(path), config=str(export_dir), local_files_only=True)


def check_single_file(export_dir: str | os.PathLike, tmp_dir: str | os.PathLike) -> tuple[bool, str]:
    """Whether the export at `export_dir` survives a single-file round trip: written to `tmp_dir`, read back with
    `from_single_file`, every tensor equal to the export's. `(ok, reason)`; the reason says why not."""
    path = Path(tmp_dir) / "single_file_check.safetensors"
    try:
        write_single_file(export_dir, path, overwrite=True)
        loaded = load_single_file(path, export_dir)
    except (ValueError, FileNotFoundError, OSError) as e:
        return False, str(e).splitlines()[0]
    parts = load_export_parts(Path(export_dir))
    for role, module in parts.items():
        back = loaded if role == "unet" and not hasattr(loaded, "unet") else getattr(loaded, role, None)
        if back is None:
            return False, f"from_single_file returned no {role}"
        try:
            _same(module.state_dict(), back.state_dict(), role)
        except ValueError as e:
            return False, str(e)
    return True, f"from_single_file reads {', '.join(parts)} back exactly"
