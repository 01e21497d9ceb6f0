"""The model families' building blocks do what their docstrings say."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ferkit.models import (CNN, MLP, BasicBlock, ResidualStage, compact_layers, get_model, has_conv_layers,
                           layer_table, preprocess)


def test_cnn_pools_each_channel_by_its_mean_and_its_maximum():
    model = get_model("cnn", widths=[4, 8]).eval()
    flat = torch.ones(1, 8, 6, 6)
    peaked = torch.zeros(1, 8, 6, 6)
    peaked[:, :, 2, 3] = 36.0  # the same mean, another maximum
    for maps in (flat, peaked):
        pooled = model.forward_head(maps, pre_logits=True)
        torch.testing.assert_close(pooled, torch.cat([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], 1))
    assert not torch.equal(model.forward_head(flat), model.forward_head(peaked))


def test_branch_relu_residual_stage_adds_its_input():
    """With the blocks' weights zeroed each block outputs 0: a residual stage then passes on its entry
    layer's output, a plain stage passes on zeros."""
    x = torch.randn(2, 1, 12, 12)
    for residual in (True, False):
        torch.manual_seed(0)
        stage = ResidualStage(1, 4, 3, residual=residual).eval()
        with torch.no_grad():
            for block in stage.blocks:
                for p in block.parameters():
                    p.zero_()
            entry = stage.entry(x)
            assert entry.abs().sum() > 0
            torch.testing.assert_close(stage(x), entry if residual else torch.zeros_like(entry))


def test_without_batch_norm_the_convs_start_at_he_init_and_the_face_reaches_the_logits():
    """Nothing rescales the activations without batch norm: at PyTorch's default init each conv-ReLU
    shrank them 2.4-fold, and through the cpu profile's 8 convs the logits were the same for every face
    (spread 1e-4) and the first conv's gradient 1e-4 of its weights."""
    torch.manual_seed(0)
    x = preprocess(torch.randint(0, 256, (32, 48, 48), dtype=torch.uint8))
    model = get_model("cnn", widths=[16, 32, 96, 192], depth=2, batch_norm=False)
    logits = model(x)
    assert float(logits.detach().std(0).mean()) > 0.02
    torch.nn.functional.cross_entropy(logits, torch.arange(32) % 7).backward()
    first = model.features[0].entry[0]
    assert float(first.weight.grad.norm() / first.weight.detach().norm()) > 0.01


def test_register_model_hands_back_the_class_it_registers():
    assert isinstance(get_model("cnn"), CNN) and isinstance(get_model("mlp"), MLP)


def test_preprocess_centres_128_and_maps_64_grey_levels_to_one():
    faces = torch.tensor([0, 64, 128, 192, 255], dtype=torch.uint8).repeat(2, 48, 1)[:, :, :5]
    out = preprocess(faces)
    assert out.shape == (2, 1, 48, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([-2.0, -1.0, 0.0, 1.0, 127 / 64]))
    torch.testing.assert_close(preprocess(faces.unsqueeze(1)), out)  # (B, 1, H, W) keeps its shape


@pytest.mark.parametrize("batch_norm", [True, False])
def test_cnn_layers_keep_the_size_and_carry_a_bias_only_without_batch_norm(batch_norm):
    model = get_model("cnn", widths=[4, 8], depth=2, batch_norm=batch_norm)
    assert model.forward_features(torch.zeros(1, 1, 48, 48)).shape == (1, 8, 24, 24)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) is batch_norm
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all((conv.bias is None) is batch_norm for conv in convs)


@pytest.mark.parametrize("residual, block", [(False, "branch_relu"), (True, "branch_relu"), (True, "resnet")])
def test_a_stage_of_depth_d_has_d_convs(residual, block):
    for depth in (1, 3, 5):
        stage = ResidualStage(1, 4, depth, residual=residual, residual_block=block)
        assert sum(isinstance(m, nn.Conv2d) for m in stage.modules()) == depth


def _randomise(module: nn.Module) -> nn.Module:
    """Non-zero weights everywhere, so that a residual sum differs from a difference."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + 0.1)
    return module.eval()


def test_basic_block_adds_its_branch_to_its_input_then_applies_relu():
    block = _randomise(BasicBlock(4))
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(x + block.branch(x)))
    first, last = block.branch  # conv-BN-ReLU, then conv-BN without ReLU: the ReLU follows the sum
    assert isinstance(first[-1], nn.ReLU) and isinstance(last[-1], nn.BatchNorm2d)


@pytest.mark.parametrize("batch_norm, zeroed", [(True, "branch.1.1.weight"), (False, "branch.1.0.weight")])
def test_basic_block_starts_as_the_identity_by_its_last_layer_alone(batch_norm, zeroed):
    block = BasicBlock(4, batch_norm).eval()
    assert [name for name, p in block.named_parameters() if name.endswith("weight") and not p.any()] == [zeroed]
    assert all(not p.any() for name, p in block.named_parameters() if name.endswith("bias"))
    x = torch.rand(2, 4, 6, 6)  # non-negative, as after a ReLU
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)


def test_branch_relu_stage_adds_each_block_to_what_reaches_it():
    stage = _randomise(ResidualStage(1, 4, 3, residual=True))
    x = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        entry = stage.entry(x)
        torch.testing.assert_close(stage(x), entry + stage.blocks[0].branch(entry))


def test_residual_blocks_keep_the_parameter_names_of_earlier_checkpoints():
    names = {block: set(get_model("cnn", widths=[4], depth=3, residual=True, residual_block=block).state_dict())
             for block in ("branch_relu", "resnet")}
    assert {"features.0.blocks.0.0.0.weight", "features.0.blocks.0.1.1.running_var"} <= names["branch_relu"]
    assert {"features.0.blocks.0.branch.0.0.weight", "features.0.blocks.0.branch.1.1.running_var"} <= names["resnet"]


@pytest.mark.parametrize("name, kwargs", [("cnn", {"widths": [4, 8]}), ("mlp", {"hidden": [32, 16]})])
def test_num_features_is_the_width_the_head_sees(name, kwargs):
    model = get_model(name, **kwargs).eval()
    features = model.forward_features(torch.zeros(2, 1, 48, 48))
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    assert model.classifier.in_features == model.num_features


def test_mlp_has_batch_norm_only_when_asked_and_cnn_alone_has_convs():
    for batch_norm in (True, False):
        mlp = get_model("mlp", hidden=[8], batch_norm=batch_norm)
        assert any(isinstance(m, nn.BatchNorm1d) for m in mlp.modules()) is batch_norm
    assert has_conv_layers(get_model("cnn", widths=[4])) and not has_conv_layers(get_model("mlp", hidden=[8]))


def test_compact_layer_table_of_a_small_cnn():
    """Batch norm and ReLU fold into their conv, the pooling done in forward() gets its own row, and
    the dropout after it stays a row of its own; parameters: conv 1*4*9 + BN 2*4, and so on."""
    rows = compact_layers(layer_table(get_model("cnn", widths=[4, 8], depth=1, dropout=0.3)))
    assert [(r["layer"], r["output"], r["parameters"], r["count"]) for r in rows] == [
        ("Conv2d 1->4, 3×3 + BatchNorm2d + ReLU", (1, 4, 48, 48), 44, 1),
        ("MaxPool2d 2×2", (1, 4, 24, 24), 0, 1),
        ("Conv2d 4->8, 3×3 + BatchNorm2d + ReLU", (1, 8, 24, 24), 304, 1),
        ("(function in forward(), no module)", (1, 16), 0, 1),
        ("Dropout p=0.3", (1, 16), 0, 1),
        ("Linear 16->7", (1, 7), 119, 1),
    ]


@pytest.mark.parametrize("block, batch_norm, formula, parameters", [
    ("branch_relu", True, "x + ReLU(BN(conv(ReLU(BN(conv(x))))))", (44, 2 * 2 * (144 + 8))),
    ("resnet", True, "ReLU(x + BN(conv(ReLU(BN(conv(x))))))", (44, 2 * 2 * (144 + 8))),
    ("resnet", False, "ReLU(x + conv(ReLU(conv(x))))", (40, 2 * 2 * (144 + 4))),
])
def test_a_residual_block_is_one_row_that_gives_its_sum(block, batch_norm, formula, parameters):
    """The shortcut's sum has no module, so the leaf layers alone would not show it: each block gets one row,
    its formula in x, and a stage's two identical blocks collapse into one row x 2."""
    model = get_model("cnn", widths=[4], depth=5, residual=True, residual_block=block, batch_norm=batch_norm)
    entry = "Conv2d 1->4, 3×3" + (" + BatchNorm2d" if batch_norm else "") + " + ReLU"
    rows = compact_layers(layer_table(model))
    assert [(r["name"], r["layer"], r["output"], r["parameters"], r["count"]) for r in rows] == [
        ("features.0.entry.0", entry, (1, 4, 48, 48), parameters[0], 1),
        ("features.0.blocks.0", f"{formula}; conv 4->4, 3×3", (1, 4, 48, 48), parameters[1], 2),
        ("", "(function in forward(), no module)", (1, 8), 0, 1),
        ("classifier", "Linear 8->7", (1, 7), 63, 1)]


def test_a_leaf_lies_in_the_outermost_residual_block_whose_name_is_its_parent():
    class Added(nn.Sequential):
        def forward(self, x):
            return x + super().forward(x)

        def formula(self):
            return f"x + f{len(self)}(x)"

    # block "1" is no parent of "10.0": a name's prefix alone is not its parent's name
    model = nn.Sequential(*(Added(nn.Conv2d(1, 1, 1)) for _ in range(10)),
                          Added(Added(nn.Conv2d(1, 1, 1)), nn.Conv2d(1, 1, 1)))
    rows = layer_table(model, input_shape=(1, 1, 3, 3))
    assert [(r["name"], r["block"]) for r in rows[9:]] == [
        ("9.0", ("9", "x + f1(x)")), ("10.0.0", ("10", "x + f2(x)")), ("10.1", ("10", "x + f2(x)"))]


def test_layer_table_counts_a_module_called_twice_once_and_names_a_stride():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, stride=2)
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.fc(self.conv(x).flatten(1)))

    rows = layer_table(Twice(), input_shape=(1, 1, 5, 5))
    assert [(r["name"], r["detail"], r["parameters"]) for r in rows] == [
        ("conv", "1->2, 3×3, stride 2", 20), ("fc", "8->8", 72), ("fc", "8->8", 0)]
    assert layer_table(nn.Sequential(nn.Conv2d(1, 2, 3)), input_shape=(1, 1, 5, 5))[0]["detail"] == "1->2, 3×3"
