"""Bad files: JSON of the wrong shape (`json-shape`), corrupt or mismatched weights (`weights`), corrupt images and
captions (`images`)."""

from __future__ import annotations

import json

from . import commands as C
from .harness import Case, Ctx, Outcome
from .inputs import (
    NOT_JSON,
    WRONG_TOP,
    chain,
    copy,
    edit_json,
    folder,
    put,
    remove_rel,
    safetensors_bytes,
    set_key,
    truncate_rel,
    truncated_png,
    write_rel,
)

CASES: list[Case] = []


def add(*cases: Case) -> None:
    CASES.extend(cases)


# ================================================================================================ json-shape
def _plan_text(change):
    """The fixture plan with `change(dict)` applied, as text."""

    def make(ctx: Ctx) -> str:
        data = json.loads(ctx["plan"].read_text())
        new = change(data)
        return json.dumps(data if new is None else new)

    return make


PLAN_FIELDS = {
    "base-list": ("base", set_key("base", [])),
    "base-string": ("base", set_key("base", "sd-v1")),
    "base-number": ("base", set_key("base", 7)),
    "actions-list": ("actions", set_key("actions", ["interpolate"])),
    "actions-string": ("actions", set_key("actions", "drop")),
    "keep-string": ("keep", set_key("keep", "down_blocks.0")),
    "keep-ints": ("keep", set_key("keep", [1, 2, 3])),
    "version-string": ("version", set_key("version", "1")),
}
PLAN_TEXTS = {**WRONG_TOP, **NOT_JSON}

for entry, base in (("apply", C.APPLY_KEEP), ("report", C.REPORT_KEEP)):
    for what, text in PLAN_TEXTS.items():
        add(
            Case(
                "json-shape",
                f"{entry}-plan-{what}",
                C.override(base, "--keep", "{bad}"),
                setup=put("bad", "bad-plan.json", text),
                expect=("name:bad",),
            )
        )
    for what, (key, change) in PLAN_FIELDS.items():
        add(
            Case(
                "json-shape",
                f"{entry}-plan-{what}",
                C.override(base, "--keep", "{bad}"),
                setup=put("bad", "bad-plan.json", _plan_text(change)),
                expect=("name:bad",),
                also=(key,),
            )
        )
for what in ("list", "invalid", "nested", "base-list", "actions-string", "keep-string"):
    text = PLAN_TEXTS[what] if what in PLAN_TEXTS else _plan_text(PLAN_FIELDS[what][1])
    add(
        Case(
            "json-shape",
            f"report-compare-plan-{what}",
            (*C.REPORT, "--compare", "bk-small", "{bad}"),
            setup=put("bad", "bad-plan.json", text),
            expect=("name:bad",),
        )
    )

# score JSON: plot, plan --target --scores, score --compare
SCORE_JSON = {
    **WRONG_TOP,
    **NOT_JSON,
    "scores-string": '{"meta": {}, "scores": "x"}',
    "scores-dict": '{"meta": {}, "scores": {"name": "mid_block"}}',
    "rows-numbers": '{"meta": {}, "scores": [1, 2]}',
}
for what, text in SCORE_JSON.items():
    for entry, argv in (
        ("plot", ("plot", "{bad}", "-o", "{tmp}/f.png")),
        ("plan-target", C.override(C.PLAN_TARGET, "--scores", "{bad}")),
        ("compare", ("score", "--compare", "{bad}", "{scores}")),
    ):
        add(
            Case(
                "json-shape",
                f"{entry}-scores-json-{what}",
                argv,
                setup=put("bad", "bad-scores.json", text),
                expect=("name:bad",),
            )
        )


# config.json of a --model U-Net folder (weights present: linked to the demo's)
def unet_folder(key: str, config) -> callable:
    def setup(ctx: Ctx) -> None:
        src = ctx["demo"] / "unet"
        dst = ctx.add(key, ctx.tmp / "my-unet")
        dst.mkdir(parents=True)
        for f in src.iterdir():
            if f.name != "config.json":
                (dst / f.name).symlink_to(f)
        text = config(json.loads((src / "config.json").read_text())) if callable(config) else config
        (dst / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())

    return setup


def _config_with(key, value):
    def change(cfg: dict) -> str:
        cfg[key] = value
        return json.dumps(cfg)

    return change


CONFIGS = {
    **WRONG_TOP,
    **NOT_JSON,
    "class-number": _config_with("_class_name", 5),
    "channels-string": _config_with("block_out_channels", "abc"),
    "blocks-number": _config_with("down_block_types", 7),
}
CONFIG_KEYS = {
    "class-number": ("_class_name",),
    "channels-string": ("block_out_channels",),
    "blocks-number": ("down_block_types",),
}
for what, config in CONFIGS.items():
    for entry, argv in (
        ("blocks", C.override(C.BLOCKS, "--model", "{bad}")),
        ("report", C.override(C.REPORT, "--model", "{bad}")),
    ):
        add(
            Case(
                "json-shape",
                f"{entry}-config-{what}",
                argv,
                setup=unet_folder("bad", config),
                expect=("config.json",),
                also=CONFIG_KEYS.get(what, ()),
            )
        )

# export marker (prune_lab_pruned.json) of a compact export: load_pruned and blocks --model
MARKER = "unet/prune_lab_pruned.json"
MARKERS = {
    **{k: write_rel(MARKER, v) for k, v in {**WRONG_TOP, **NOT_JSON}.items()},
    "format-missing": edit_json(MARKER, lambda d: d.pop("format")),
    "format-number": edit_json(MARKER, set_key("format", 5)),
    "version-string": edit_json(MARKER, set_key("version", "1")),
    "plan-string": edit_json(MARKER, set_key("plan", "x")),
    "plan-list": edit_json(MARKER, set_key("plan", [])),
    "base-config-list": edit_json(MARKER, set_key("base_config", [])),
    "base-config-missing": edit_json(MARKER, lambda d: d.pop("base_config")),
    "backbone-number": edit_json(MARKER, set_key("backbone", 7)),
}


def _load_pruned(ctx: Ctx):
    from prune_lab import load_pruned

    return load_pruned(ctx["bad"])


for what, edit in MARKERS.items():
    add(
        Case(
            "json-shape",
            f"load_pruned-marker-{what}",
            call=_load_pruned,
            setup=copy("bad", "compact", None, edit),
            exc=(ValueError,),
            expect=("prune_lab_pruned.json",),
        ),
        Case(
            "json-shape",
            f"blocks-marker-{what}",
            C.override(C.BLOCKS, "--model", "{bad}"),
            setup=copy("bad", "compact", None, edit),
            expect=("prune_lab_pruned.json",),
        ),
    )

# generation.json of a generate --out folder being resumed
GENERATION = {**WRONG_TOP, **NOT_JSON, "model-dict": '{"model": {"a": 1}, "steps": [1]}'}
for what, text in GENERATION.items():
    add(
        Case(
            "json-shape",
            f"generate-generation-json-{what}",
            C.GENERATE,
            setup=folder("g", "g", {"generation.json": text}),
            expect=("generation.json",),
        )
    )

# unit_map.json of a distill --student
UNIT_MAPS = {"list": "[]", "null": "null", "empty": "", "invalid": "{", "values-numbers": '{"conv_in": 5}'}
for what, text in UNIT_MAPS.items():
    add(
        Case(
            "json-shape",
            f"distill-unit-map-{what}",
            C.override(C.DISTILL, "--student", "{bad}"),
            setup=copy("bad", "export", "student", write_rel("unit_map.json", text)),
            expect=("unit_map.json",),
        )
    )

# cache.json of a latents cache given to distill --data
CACHE_INDEX = {
    "list": write_rel("cache.json", "[]"),
    "invalid": write_rel("cache.json", "{"),
    "shards-string": edit_json("cache.json", set_key("shards", "x")),
    "flip-missing": edit_json("cache.json", lambda d: d.pop("flip")),
    "cond-number": edit_json("cache.json", set_key("cond", 3)),
}
for what, edit in CACHE_INDEX.items():
    add(
        Case(
            "json-shape",
            f"distill-cache-json-{what}",
            C.override(C.DISTILL, "--data", "{bad}"),
            setup=copy("bad", "cache", None, edit),
            expect=("cache.json",),
        )
    )

# COCO captions file
COCO = {
    **WRONG_TOP,
    **NOT_JSON,
    "annotations-dict": '{"images": [], "annotations": {"a": 1}}',
    "images-string": '{"images": "x", "annotations": []}',
    "caption-missing": '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 2, "image_id": 1}]}',
    "file-name-missing": '{"images": [{"id": 1}], "annotations": [{"id": 2, "image_id": 1, "caption": "c"}]}',
}
for what, text in COCO.items():
    add(
        Case(
            "json-shape",
            f"coco-prompts-{what}",
            C.override(
                C.COCO,
                "--annotations",
                "{bad}",
            ),
            setup=put("bad", "captions.json", text),
            expect=("captions.json",),
        )
    )

# metadata.jsonl rows of an image-text folder
for what, rows in (("row-list", '["000000.png", "a red circle"]\n'), ("row-invalid", '{"file_name": \n')):
    jsonl = chain(copy("bad", "data", "data", remove_rel("metadata.csv"), write_rel("metadata.jsonl", rows)))
    add(
        Case(
            "json-shape",
            f"score-metadata-jsonl-{what}",
            C.override(C.SCORE_CALIB, "--calib-dir", "{bad}"),
            setup=jsonl,
            expect=("metadata.jsonl",),
        ),
        Case(
            "json-shape",
            f"cache-latents-metadata-jsonl-{what}",
            C.override(C.CACHE, "--data", "{bad}"),
            setup=jsonl,
            expect=("metadata.jsonl",),
        ),
    )


# ==================================================================================================== weights
WEIGHTS = "diffusion_pytorch_model.safetensors"


def _weights(kind: str):
    """Edits of a U-Net folder's weights file."""

    def tensors(ctx: Ctx, folder, change) -> None:
        from safetensors.torch import load_file, save_file

        path = folder / WEIGHTS
        state = load_file(str(path.resolve()))
        path.unlink()
        change(state)
        save_file(state, str(path))

    def missing(state):
        state.pop(sorted(state)[0])

    def shape(state):
        name = next(k for k in sorted(state) if k.endswith(".weight") and state[k].ndim == 4)
        state[name] = state[name][:, :-1].contiguous()

    def extra(state):
        import torch

        state["not_a_layer.weight"] = torch.zeros(3)

    def replace(data: bytes):
        def edit(ctx, folder):
            (folder / WEIGHTS).unlink()
            (folder / WEIGHTS).write_bytes(data)

        return edit

    def truncate(ctx, folder):
        data = (folder / WEIGHTS).resolve().read_bytes()
        (folder / WEIGHTS).unlink()
        (folder / WEIGHTS).write_bytes(data[: len(data) // 2])

    return {
        "no-weights": remove_rel(WEIGHTS),
        "empty": replace(b""),
        "truncated": truncate,
        "not-safetensors": replace(b"PK\x03\x04 this is not a safetensors file"),
        "missing-tensor": lambda ctx, f: tensors(ctx, f, missing),
        "wrong-shape": lambda ctx, f: tensors(ctx, f, shape),
        "extra-tensor": lambda ctx, f: tensors(ctx, f, extra),
    }[kind]


def unet_weights(kind: str):
    def setup(ctx: Ctx) -> None:
        unet_folder("bad", lambda cfg: json.dumps(cfg))(ctx)
        _weights(kind)(ctx, ctx["bad"])

    return setup


for kind in ("no-weights", "empty", "truncated", "not-safetensors", "missing-tensor", "wrong-shape"):
    for entry, argv in (
        ("blocks", C.override(C.BLOCKS, "--model", "{bad}")),
        ("apply", C.override(C.APPLY, "--model", "{bad}")),
        ("score", C.override(C.SCORE, "--model", "{bad}")),
    ):
        add(Case("weights", f"{entry}-unet-folder-{kind}", argv, setup=unet_weights(kind), expect=("name:bad",)))


def compact_weights(kind: str):
    def setup(ctx: Ctx) -> None:
        copy("bad", "compact")(ctx)
        _weights(kind)(ctx, ctx["bad"] / "unet")

    return setup


for kind in ("empty", "truncated", "not-safetensors", "missing-tensor", "wrong-shape", "extra-tensor"):
    add(
        Case(
            "weights",
            f"load_pruned-compact-{kind}",
            call=_load_pruned,
            setup=compact_weights(kind),
            exc=(ValueError, FileNotFoundError),
            expect=(WEIGHTS, "unet"),
        ),
        Case(
            "weights",
            f"generate-compact-{kind}",
            C.override(C.GENERATE, "--model", "{bad}"),
            setup=compact_weights(kind),
            expect=(WEIGHTS, "name:bad"),
        ),
    )

add(
    Case(
        "weights",
        "generate-pipeline-unet-without-weights",
        C.override(C.GENERATE, "--model", "{bad}"),
        setup=copy("bad", "export", "pipe", remove_rel(f"unet/{WEIGHTS}")),
        expect=("unet",),
    ),
    Case(
        "weights",
        "cache-latents-pipeline-vae-without-weights",
        C.override(C.CACHE, "--model", "{bad}"),
        setup=copy("bad", "export", "pipe", remove_rel("vae/diffusion_pytorch_model.safetensors")),
        expect=("vae",),
    ),
    Case(
        "weights",
        "distill-student-without-weights",
        C.override(C.DISTILL, "--student", "{bad}"),
        setup=copy("bad", "export", "student", remove_rel(f"unet/{WEIGHTS}")),
        expect=("name:bad",),
    ),
)

# a hub id with no network: the message names HF_HUB_OFFLINE and the local-folder alternative
HUB = "nobody-here/no-such-model"
for entry, argv in (
    ("blocks", C.override(C.BLOCKS, "--model", HUB)),
    ("report", C.override(C.REPORT, "--model", HUB)),
    ("apply", C.override(C.APPLY, "--model", HUB)),
    ("score", C.override(C.SCORE, "--model", HUB)),
    ("generate", C.override(C.GENERATE, "--model", HUB)),
    ("cache-latents", C.override(C.CACHE, "--model", HUB)),
    ("distill", C.override(C.DISTILL, "--teacher", HUB)),
    ("width", C.override(C.WIDTH, "--model", HUB)),
):
    add(Case("weights", f"{entry}-hub-id-offline", argv, expect=("HF_HUB_OFFLINE",), also=(HUB, "folder")))

# calibration caches (--calib-cache) and other weight-like files
CALIB = {
    "empty": b"",
    "truncated": lambda ctx: ctx["calib"].read_bytes()[:40],
    "text": b"latents,embeddings\n1,2\n",
    "no-metadata": lambda ctx: safetensors_bytes(),
}
for what, content in CALIB.items():
    add(
        Case(
            "weights",
            f"score-calib-cache-{what}",
            (*C.drop(C.SCORE_TAYLOR, "--synthetic"), "--calib-cache", "{bad}"),
            setup=put("bad", "calib.safetensors", content),
            expect=("name:bad",),
        )
    )


def _wrong_calib(ctx: Ctx) -> bytes:
    import torch

    return safetensors_bytes(
        {"latents": torch.zeros(2, 3, 8, 8), "embeddings": torch.zeros(2, 7, 5)}, {"format": "prune_lab.calibration"}
    )


add(
    Case(
        "weights",
        "score-calib-cache-wrong-shapes",
        (*C.drop(C.SCORE_TAYLOR, "--synthetic"), "--calib-cache", "{bad}"),
        setup=put("bad", "calib.safetensors", _wrong_calib),
        expect=("name:bad",),
    ),
    Case(
        "weights",
        "width-calib-cache-empty",
        (*C.drop(C.WIDTH_TAYLOR, "--synthetic"), "--calib-cache", "{bad}"),
        setup=put("bad", "calib.safetensors", b""),
        expect=("name:bad",),
    ),
    Case(
        "weights",
        "width-calib-cache-truncated",
        (*C.drop(C.WIDTH_TAYLOR, "--synthetic"), "--calib-cache", "{bad}"),
        setup=put("bad", "calib.safetensors", lambda ctx: ctx["calib"].read_bytes()[:40]),
        expect=("name:bad",),
    ),
    Case(
        "weights",
        "score-clip-checkpoint-garbage",
        (*C.SCORE_CLIP, "--clip-checkpoint", "{bad}"),
        setup=put("bad", "scorer.safetensors", b"garbage"),
        expect=("name:bad",),
    ),
    Case(
        "weights",
        "distill-cache-shard-truncated",
        C.override(C.DISTILL, "--data", "{bad}"),
        setup=copy("bad", "cache", None, truncate_rel("shard-00000.safetensors", 0.3)),
        expect=("shard-00000",),
    ),
)


# ===================================================================================================== images
def error_or_skip(*names: str):
    """A bad row may be refused (exit 2, one line naming the file / row) or skipped with a count (exit 0, the
    output names the file); either way the data folder (`bad`) is untouched (issue 14: the fixers decide)."""

    def verdict(ctx: Ctx, o: Outcome, changes: dict) -> list[str]:
        from .harness import cli_problems, disk_problems

        frags = [ctx.fmt(n) for n in names]
        if o.rc == 0 and o.exc is None and not o.timed_out:
            text = (o.out + o.err).lower()
            problems = (
                []
                if all(f.lower() in text for f in frags) and "skip" in text
                else [f"ACCEPTED rc=0 without naming {frags} as skipped"]
            )
            return problems + disk_problems({k: v for k, v in changes.items() if k != "tmp"})
        case = Case("images", "-", expect=(frags[0],), also=tuple(frags[1:]))
        return cli_problems(case, ctx, o) + disk_problems(changes)

    return verdict


ROW = 1  # the bad row (second image), inside --samples 2
IMAGE = f"{ROW:06d}.png"
BAD_IMAGES = {
    "zero-byte": write_rel(IMAGE, b""),
    "truncated": write_rel(IMAGE, truncated_png()),
    "not-an-image": write_rel(IMAGE, "this is text, not a PNG\n"),
    "directory": lambda ctx, root: ((root / IMAGE).unlink(), (root / IMAGE).mkdir()),
}


def _long_caption(ctx: Ctx, root) -> None:
    lines = (root / "metadata.csv").read_text().splitlines()
    cells = lines[ROW + 1].split(",")
    cells[1] = " ".join(["a red circle"] * 5000)
    lines[ROW + 1] = ",".join(cells)
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


IMAGE_ENTRIES = {
    "score": C.override(C.SCORE_CALIB, "--calib-dir", "{bad}"),
    "cache-latents": C.override(C.CACHE, "--data", "{bad}"),
    "distill": C.override(C.DISTILL, "--data", "{bad}"),
    "eval": C.override(C.override(C.EVAL, "--images", "{bad}"), "--prompts", "{bad}/metadata.csv"),
    "width": (*C.drop(C.WIDTH_TAYLOR, "--synthetic"), "--calib-dir", "{bad}"),
}
for entry, argv in IMAGE_ENTRIES.items():
    hashed = () if entry == "eval" else ("bad",)  # eval writes its result into the image folder
    for what, edit in BAD_IMAGES.items():
        add(
            Case(
                "images",
                f"{entry}-image-{what}",
                argv,
                setup=copy("bad", "data", "data", edit),
                hashed=hashed,
                verdict=error_or_skip(IMAGE),
            )
        )
    add(
        Case(
            "images",
            f"{entry}-caption-oversized",
            argv,
            setup=copy("bad", "data", "data", _long_caption),
            hashed=hashed,
            verdict=error_or_skip("metadata.csv", "row"),
        )
    )

for entry in ("score", "cache-latents", "distill"):
    argv = IMAGE_ENTRIES[entry]
    add(
        Case(
            "images",
            f"{entry}-metadata-not-utf8",
            argv,
            hashed=("bad",),
            setup=copy("bad", "data", "data", write_rel("metadata.csv", b"file_name,text\n000000.png,\xff\xfe red\n")),
            expect=("metadata.csv",),
        ),
        Case(
            "images",
            f"{entry}-metadata-empty-file-name",
            argv,
            hashed=("bad",),
            setup=copy("bad", "data", "data", write_rel("metadata.csv", "file_name,text\n,a red circle\n")),
            expect=("metadata.csv",),
            also=("row",),
        ),
    )
