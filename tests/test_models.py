"""The model families' building blocks do what their docstrings say."""

from __future__ import annotations

import torch

from ferkit.models import ResidualStage, get_model


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
    from ferkit.models import preprocess

    torch.manual_seed(0)
    x = preprocess(torch.randint(0, 256, (32, 48, 48), dtype=torch.uint8))
    model = get_model("cnn", widths=[16, 32, 96, 192], depth=2, batch_norm=False)
    logits = model(x)
    assert float(logits.detach().std(0).mean()) > 0.02
    torch.nn.functional.cross_entropy(logits, torch.arange(32) % 7).backward()
    first = model.features[0].entry[0]
    assert float(first.weight.grad.norm() / first.weight.detach().norm()) > 0.01
