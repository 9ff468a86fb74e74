"""Training data: an image-text folder, or a cache of VAE posteriors + text conditioning written once from it.

Image-text folder: images plus `metadata.csv` or `metadata.jsonl` with columns `file_name,text` (the layout of
Hugging Face's `imagefolder`, read by :func:`prune_lab.runtime.readers.read_image_text`). Each image is resized
on its smaller edge, center-cropped to `resolution` and flipped left-right with probability 1/2. The flip is a
hash of (seed, epoch, index), so the data a step sees depends only on the step: a resumed run sees exactly what an
uninterrupted one would. A corrupt image is skipped (the next readable one takes its place) and reported in the
batch's `bad` list; it never crashes a run.

Latents cache (`prunelab cache-latents`): `cache.json` + safetensors shards with each image's VAE posterior
`moments` (mean and log-variance), the same for the flipped image, and the conditioning tensors (`cond.<name>`).
Training from a cache never runs the VAE encoder or the text encoder(s).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import UnidentifiedImageError
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ..runtime.atomic import OUTPUT_MARKER, check_removable, write_json, write_with
from ..runtime.generation import check_resolution
from ..runtime.readers import crop_tensor, read_image_text, read_rgb
from ..runtime.validate import need, read_json
from .encoders import FrozenEncoders, encode_moments

CACHE_FORMAT, CACHE_VERSION, CACHE_INDEX = "prune_lab.latent_cache", 1, "cache.json"
BAD_IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


def flip_for(seed: int, epoch: int, index: int) -> bool:
    """Whether sample `index` is flipped in `epoch` (a hash of the three, not global RNG state)."""
    return random.Random(f"{seed}:{epoch}:{index}").random() < 0.5


class EpochSampler(Sampler):
    """Yields `(epoch, index)` keys in a permutation seeded by (seed, epoch); `set_epoch` moves to another epoch."""

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.arange(self.size)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        return iter([(self.epoch, int(i)) for i in order])

    def __len__(self) -> int:
        return self.size


def _key(key) -> tuple[int, int]:
    return key if isinstance(key, tuple) else (0, int(key))


# ---------------------------------------------------------------------------------------- image-text folder
class ImageTextFolder(Dataset):
    """An image-text folder as (B, 3, R, R) tensors in [-1, 1] plus captions.

    Args:
        folder: the folder holding the images and `metadata.csv` / `metadata.jsonl`.
        resolution: output side R (smaller edge resized to R, then center crop).
        seed: seeds the flips (:func:`flip_for`).
        flip: random left-right flips (off when writing a cache: the cache stores both orientations).
    """

    def __init__(self, folder, resolution: int = 512, seed: int = 0, flip: bool = True, scan: bool = False) -> None:
        self.folder = Path(folder)
        self.rows = read_image_text(self.folder)
        self.resolution, self.seed, self.flip = resolution, seed, flip
        #: `file_name` of every image left out by the scan
        self.skipped: list[str] = []
        if scan:
            self._scan()

    def _scan(self) -> None:
        """Leave out the images that do not decode (PIL's `verify`: header and chunk checksums), once, up front, so
        every one is reported and the rows a run sees do not depend on which images it happened to draw.

        Raises:
            ValueError: no image of the folder is readable.
        """
        from PIL import Image

        good = []
        for row in self.rows:
            try:
                with Image.open(row.path) as image:
                    image.verify()
                good.append(row)
            except BAD_IMAGE_ERRORS:
                self.skipped.append(row.file_name)
        if not good:
            raise ValueError(
                f"--data {self.folder}: none of its {len(self.rows)} images can be read "
                f"(e.g. {self.rows[0].file_name}); fix or replace the images"
            )
        self.rows = good

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int, flip: bool = False) -> dict | None:
        """Sample `index` (None if its image cannot be decoded)."""
        row = self.rows[index]
        try:
            image = read_rgb(row.path)
        except BAD_IMAGE_ERRORS:
            return None
        size = torch.tensor([image.height, image.width])
        pixels, (top, left) = crop_tensor(image, self.resolution)
        return {
            "index": index,
            "pixel_values": pixels.flip(-1) if flip else pixels,
            "text": row.text,
            "original_size": size,
            "crop_top_left": torch.tensor([top, left]),
        }

    def first_readable(self) -> int:
        """The index of the first image that decodes (usually 0: one image is read).

        Raises:
            ValueError: no image of the folder can be read (naming the folder and the first one).
        """
        for i in range(len(self)):
            if self.load(i) is not None:
                return i
        raise ValueError(
            f"--data {self.folder}: none of its {len(self)} images can be read (e.g. {self.rows[0].file_name}); "
            "fix or replace the images"
        )

    def __getitem__(self, key) -> dict:
        epoch, index = _key(key)
        bad = []
        for step in range(len(self)):
            i = (index + step) % len(self)
            item = self.load(i, self.flip and flip_for(self.seed, epoch, i))
            if item is not None:
                return {**item, "bad": bad}
            bad.append(self.rows[i].file_name)
        raise ValueError(f"no image in {self.folder} can be read")


def collate(items: list[dict]) -> dict:
    """Stack tensors (nested `cond` dicts too), keep strings as lists, concatenate the `bad` lists."""
    out = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key == "bad":
            out[key] = [b for v in values for b in v]
        elif isinstance(values[0], dict):
            out[key] = {k: torch.stack([v[k] for v in values]) for k in values[0]}
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], int):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


# ------------------------------------------------------------------------------------------------ cache
class LatentCache(Dataset):
    """A latents cache written by :func:`write_latent_cache`; items hold `moments` (2·C, h, w) and `cond`."""

    def __init__(self, folder, seed: int = 0, flip: bool = True) -> None:
        self.folder = Path(folder)
        index = self.folder / CACHE_INDEX
        if not index.exists():
            raise FileNotFoundError(
                f"{self.folder} is not a finished latents cache (no {CACHE_INDEX}); write it "
                "with `prunelab cache-latents`"
            )
        self.meta = read_cache_index(index)
        self.seed, self.flip = seed, flip and self.meta["flip"]
        self.rows = [(s["file"], r) for s in self.meta["shards"] for r in range(s["count"])]
        self._check_shards()
        self._open: dict[str, object] = {}

    def _check_shards(self) -> None:
        """Every shard a readable safetensors file with the rows `cache.json` lists (headers only: cheap)."""
        from safetensors import SafetensorError

        for shard in self.meta["shards"]:
            path = self.folder / shard["file"]
            try:
                with safe_open(str(path), framework="pt") as f:
                    rows = f.get_slice("moments").get_shape()[0]
            except (SafetensorError, OSError) as e:
                raise ValueError(f"{path} is not a readable cache shard ({e}); rewrite the cache") from None
            if rows < shard["count"]:
                raise ValueError(
                    f"{path} holds {rows} rows, not the {shard['count']} of cache.json; rewrite the cache"
                )

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:  # safetensors handles do not pickle (DataLoader workers)
        return {**self.__dict__, "_open": {}}

    def _tensor(self, file: str, name: str, row: int) -> torch.Tensor:
        if file not in self._open:
            self._open[file] = safe_open(str(self.folder / file), framework="pt")
        return self._open[file].get_slice(name)[row]

    def __getitem__(self, key) -> dict:
        epoch, index = _key(key)
        file, row = self.rows[index]
        flipped = self.flip and flip_for(self.seed, epoch, index)
        moments = self._tensor(file, "moments_flipped" if flipped else "moments", row)
        cond = {name: self._tensor(file, f"cond.{name}", row) for name in self.meta["cond"]}
        return {"index": index, "moments": moments, "cond": cond}


def read_cache_index(path: Path) -> dict:
    """`cache.json` of a latents cache, its shape checked (the file and the key named).

    Raises:
        ValueError: not a version-:data:`CACHE_VERSION` prune_lab cache index.
    """
    meta = read_json(path, "cache.json")
    if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
        raise ValueError(f"{path} is not a prune_lab latents cache version {CACHE_VERSION}; rewrite it")
    where = str(path)
    need(meta, "flip", bool, where)
    need(meta, "resolution", int, where)
    need(meta, "scaling_factor", (int, float), where)
    for i, name in enumerate(need(meta, "cond", list, where)):
        if not isinstance(name, str):
            raise ValueError(f"{path}: cond[{i}] is a {type(name).__name__}, not a tensor name")
    for i, shard in enumerate(need(meta, "shards", list, where)):
        need(shard, "file", str, f"{path} shards[{i}]")
        need(shard, "count", int, f"{path} shards[{i}]")
        if "/" in shard["file"] or "\\" in shard["file"] or shard["file"].startswith("."):
            raise ValueError(f"{path} shards[{i}] names {shard['file']!r}, which is not a file of the cache folder")
    return meta


def open_dataset(path, resolution: int = 512, seed: int = 0, flip: bool = True, scan: bool = False) -> Dataset:
    """A :class:`LatentCache` if `path` holds `cache.json`, else an :class:`ImageTextFolder` (`flip`: random
    left-right flips; off for data whose captions name left and right; `scan`: leave out unreadable images)."""
    path = Path(path)
    if (path / CACHE_INDEX).exists():
        cache = LatentCache(path, seed, flip)
        if cache.meta["resolution"] != resolution:
            raise ValueError(
                f"the cache {path} was written at resolution {cache.meta['resolution']}, not "
                f"{resolution}; pass --resolution {cache.meta['resolution']} or rewrite the cache"
            )
        return cache
    return ImageTextFolder(path, resolution, seed, flip, scan)


@dataclass
class CacheSummary:
    """What :func:`write_latent_cache` wrote."""

    out_dir: Path
    count: int
    shards: int
    skipped: list[str] = field(default_factory=list)
    resumed_shards: int = 0


def _encode_shard(
    encoders: FrozenEncoders, loader: DataLoader, flip: bool, dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], list[str], int]:
    tensors: dict[str, list[torch.Tensor]] = {}
    skipped: list[str] = []
    device = encoders.vae.device
    for batch in loader:
        skipped += batch["bad"]
        if not batch["ok"]:
            continue
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch["ok"].items()}
        parts = {"moments": encode_moments(encoders.vae, batch["pixel_values"])}
        if flip:
            parts["moments_flipped"] = encode_moments(encoders.vae, batch["pixel_values"].flip(-1))
        parts.update({f"cond.{k}": v for k, v in encoders.condition(batch).items()})
        for k, v in parts.items():
            tensors.setdefault(k, []).append(v.to("cpu", dtype))
    out = {k: torch.cat(v).contiguous() for k, v in tensors.items()}
    return out, skipped, len(out["moments"]) if out else 0


def _collate_valid(items: list[dict | tuple]) -> dict:
    ok = [i for i in items if isinstance(i, dict)]
    return {"ok": collate(ok) if ok else None, "bad": [i[1] for i in items if isinstance(i, tuple)]}


class _Uncached(Dataset):
    def __init__(self, folder: ImageTextFolder, indices: range) -> None:
        self.folder, self.indices = folder, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        item = self.folder.load(index)
        return item if item is not None else ("bad", self.folder.rows[index].file_name)


def _write_shard(
    encoders: FrozenEncoders,
    folder: ImageTextFolder,
    indices: range,
    path: Path,
    settings: dict,
    batch_size: int,
    num_workers: int,
) -> None:
    loader = DataLoader(
        _Uncached(folder, indices), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate_valid
    )
    tensors, bad, count = _encode_shard(encoders, loader, settings["flip"], getattr(torch, settings["dtype"]))
    metadata = {"count": str(count), "skipped": json.dumps(bad), "settings": json.dumps(settings, sort_keys=True)}
    write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _read_shard(path: Path, settings: dict) -> tuple[int, list[str], set[str]]:
    """(count, skipped files, conditioning names) of a finished shard written with the same settings."""
    with safe_open(str(path), framework="pt") as f:
        meta, names = f.metadata(), set(f.keys())
    if json.loads(meta.get("settings", "{}")) != settings:
        raise ValueError(
            f"{path} was written with other settings ({meta.get('settings')}); pass --overwrite to "
            "start the cache again"
        )
    return int(meta["count"]), json.loads(meta["skipped"]), {k[5:] for k in names if k.startswith("cond.")}


def _cache_settings(folder: ImageTextFolder, resolution: int, flip: bool, dtype: torch.dtype, shard_size: int) -> dict:
    return {
        "resolution": resolution,
        "flip": flip,
        "dtype": str(dtype).removeprefix("torch."),
        "shard_size": shard_size,
        "images": len(folder),
    }


def _check_resume(out_dir: Path, settings: dict) -> int:
    """The number of finished shards in `out_dir`, after checking each was written with `settings`.

    Raises:
        ValueError: a shard that cannot be read, or one written with other settings (both values named).
    """
    from safetensors import SafetensorError

    shards = sorted(out_dir.glob("shard-*.safetensors"))
    for path in shards:
        try:
            with safe_open(str(path), framework="pt") as f:
                old = json.loads(f.metadata().get("settings", "{}"))
        except (SafetensorError, OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a readable cache shard ({e}); pass --overwrite to start again") from None
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            what = ", ".join(f"{k} {a!r} (then) vs {b!r} (now)" for k, (a, b) in diff.items())
            raise ValueError(
                f"--out {out_dir} holds a partial cache written with other settings: {what}; pass the same settings "
                "to resume, or --overwrite to start again"
            )
    return len(shards)


def prepare_latent_cache(
    data, out_dir, *, resolution: int, shard_size: int, dtype: torch.dtype, flip: bool, overwrite: bool = False
) -> tuple[ImageTextFolder, dict]:
    """Check a cache run before any encoder loads or anything is written: the data folder's rows, the output folder
    (a finished cache needs `overwrite`), and that a partial cache there was written with the same settings.

    Returns:
        The image-text folder and the shard settings.

    Raises:
        FileNotFoundError / ValueError: bad data (file and row named).
        FileExistsError: a finished cache without `overwrite`.
        ValueError: a partial cache with other settings.
    """
    check_resolution(resolution)
    out_dir = Path(out_dir)
    folder = ImageTextFolder(data, resolution, flip=False)
    folder.first_readable()
    settings = _cache_settings(folder, resolution, flip, dtype, shard_size)
    if overwrite:
        return folder, settings
    if (out_dir / CACHE_INDEX).exists():
        raise FileExistsError(f"--out {out_dir} already holds a finished cache; pass --overwrite or another --out")
    if out_dir.is_dir():
        _check_resume(out_dir, settings)
    return folder, settings


def write_latent_cache(
    encoders: FrozenEncoders,
    data,
    out_dir,
    *,
    resolution: int = 512,
    batch_size: int = 8,
    shard_size: int = 1024,
    dtype: torch.dtype = torch.float16,
    flip: bool = True,
    source: str = "",
    scheduler_dir=None,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> CacheSummary:
    """Encode an image-text folder once: VAE posteriors (+ flipped) and conditioning, in safetensors shards.

    Resumable: finished shards (written with the same settings) are kept on a rerun; `cache.json` is written last,
    so a folder without it is never read as a cache. The folder carries prune_lab's output marker from its first
    shard on, so `--overwrite` may replace it (:func:`prune_lab.runtime.atomic.check_removable`: never the data,
    the working directory or a folder prune_lab did not write). Corrupt images are skipped and listed in
    `cache.json`; a cache of no readable image is an error (and leaves no folder behind).
    """
    out_dir = Path(out_dir)
    folder, settings = prepare_latent_cache(
        data, out_dir, resolution=resolution, shard_size=shard_size, dtype=dtype, flip=flip, overwrite=overwrite
    )
    if overwrite and out_dir.exists() and any(out_dir.iterdir()):
        check_removable(out_dir, inputs=[data])
        shutil.rmtree(out_dir)
    created = not out_dir.exists()
    try:
        return _write_cache(
            encoders, folder, out_dir, settings, batch_size, num_workers, source, scheduler_dir, progress
        )
    except Exception:
        if created and not any(p.name != OUTPUT_MARKER for p in out_dir.glob("*")):
            shutil.rmtree(out_dir, ignore_errors=True)  # this run made it and wrote no shard: leave nothing behind
        raise


def _write_cache(
    encoders, folder, out_dir: Path, settings: dict, batch_size, num_workers, source, scheduler_dir, progress
) -> CacheSummary:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / OUTPUT_MARKER).write_text("written by prune_lab; --overwrite may replace this folder\n")
    shard_size = settings["shard_size"]
    shards, skipped, cond, resumed = [], [], set(), 0
    for s, start in enumerate(tqdm(range(0, len(folder), shard_size), desc="cache shards", disable=not progress)):
        path = out_dir / f"shard-{s:05d}.safetensors"
        if path.exists():
            resumed += 1
        else:
            indices = range(start, min(start + shard_size, len(folder)))
            _write_shard(encoders, folder, indices, path, settings, batch_size, num_workers)
        count, bad, names = _read_shard(path, settings)
        shards.append({"file": path.name, "count": count})
        skipped, cond = skipped + bad, cond | names
    total = sum(s["count"] for s in shards)
    if total == 0:
        for shard in shards:
            (out_dir / shard["file"]).unlink()
        raise ValueError(
            f"--data {folder.folder}: none of its {len(folder)} images can be read (e.g. {skipped[0]}); "
            "fix or replace the images"
        )
    if scheduler_dir is not None and Path(scheduler_dir).is_dir():
        shutil.copytree(scheduler_dir, out_dir / "scheduler", dirs_exist_ok=True)
    index = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "source": source,
        **settings,
        "scaling_factor": encoders.scaling_factor,
        "shift_factor": encoders.shift_factor,
        "cond": sorted(cond),
        "count": total,
        "shards": shards,
        "skipped": skipped,
    }
    write_json(out_dir / CACHE_INDEX, index)
    return CacheSummary(out_dir, index["count"], len(shards), skipped, resumed)
