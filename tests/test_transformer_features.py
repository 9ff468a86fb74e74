"""Feature capture on transformer blocks reads the image stream the backbone names (SD3 / Flux blocks return
`(context, image)`; SD3's last block returns `(None, image)`)."""

import torch
from conftest import run_transformer, tiny_transformer, transformer_inputs

from prune_lab.backbones import backbone_for
from prune_lab.backbones.features import FeaturePoint
from prune_lab.distill.features import FeatureTap


def test_feature_tap_takes_the_image_stream_of_two_stream_blocks():
    model = tiny_transformer("SD3Transformer2DModel")
    backbone = backbone_for(model)
    assert [
        backbone.image_stream(model, p) for p in ("transformer_blocks.3", "transformer_blocks.3.ff", "pos_embed")
    ] == [1, 0, 0]
    outputs = {}
    handles = [
        model.get_submodule(p).register_forward_hook(lambda m, a, out, p=p: outputs.__setitem__(p, out))
        for p in ("transformer_blocks.1", "transformer_blocks.3")
    ]
    tap = FeatureTap(model, [FeaturePoint("transformer_blocks.1"), FeaturePoint("transformer_blocks.3")])
    call = transformer_inputs(model)
    with tap.capturing():
        run_transformer(model, call)
    middle, last = tap.collect()
    assert outputs["transformer_blocks.3"][0] is None  # context_pre_only: no context stream out
    assert middle is outputs["transformer_blocks.1"][1] and last is outputs["transformer_blocks.3"][1]
    for h in handles:
        h.remove()


def test_feature_tap_on_one_stream_blocks_is_unchanged():
    model = tiny_transformer("DiTTransformer2DModel")
    assert backbone_for(model).image_stream(model, "transformer_blocks.0") == 0
    tap = FeatureTap(model, [FeaturePoint("transformer_blocks.2")])
    with tap.capturing():
        run_transformer(model, transformer_inputs(model))
    (value,) = tap.collect()
    assert isinstance(value, torch.Tensor) and value.shape[-1] == 16
