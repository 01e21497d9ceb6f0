"""Augmentation on whole batches: each random choice does what the config says."""

from __future__ import annotations

import torch

from ferkit import config
from ferkit.augment import augment_batch, mix, random_affine


def _cfg(**overrides):
    return config.resolve(overrides=overrides)


def test_flip_mirrors_about_half_the_faces_and_only_when_asked():
    x = torch.rand(64, 1, 48, 48)
    still = dict(max_shift=0, max_rotate=0, max_scale=0)
    out = random_affine(x, _cfg(flip=True, **still), torch.Generator().manual_seed(0))
    same = torch.isclose(out, x, atol=1e-5).flatten(1).all(1)
    mirrored = torch.isclose(out, x.flip(-1), atol=1e-5).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 16 <= int(mirrored.sum()) <= 48
    out = random_affine(x, _cfg(flip=False, **still), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_augment_false_leaves_the_batch_alone():
    x = torch.rand(8, 1, 48, 48)
    assert torch.equal(augment_batch(x, _cfg(augment=False), torch.Generator().manual_seed(0)), x)
    assert not torch.equal(augment_batch(x, _cfg(augment=True), torch.Generator().manual_seed(0)), x)


def test_mixup_mixes_the_targets_as_it_mixes_the_faces():
    labels = torch.arange(16) % 7
    targets = torch.nn.functional.one_hot(labels, 7).float()
    x = torch.zeros(16, 1, 48, 48)
    x[:, 0, 0, :7] = targets  # each face carries its target: mixing is linear in both
    for seed in range(3):
        mixed_x, mixed_t = mix(x, targets, _cfg(mixup=0.4), torch.Generator().manual_seed(seed))
        torch.testing.assert_close(mixed_t, mixed_x[:, 0, 0, :7])
        torch.testing.assert_close(mixed_t.sum(1), torch.ones(16))
    assert not torch.equal(mixed_t, targets)


def test_cutmix_targets_weigh_each_face_by_the_share_of_its_pixels():
    b = 16
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, 48, 48).clone()  # face i is all i
    targets = torch.eye(b)
    for seed in range(4):
        mixed_x, mixed_t = mix(x, targets, _cfg(cutmix=1.0), torch.Generator().manual_seed(seed))
        share = torch.stack([(mixed_x == i).float().mean(dim=(1, 2, 3)) for i in range(b)], 1)  # (B, B)
        torch.testing.assert_close(mixed_t, share)


def _only(**overrides):
    """A config with every random change off except the ones named."""
    off = dict(flip=False, max_shift=0, max_rotate=0, max_scale=0, erase_prob=0)
    return _cfg(**{**off, **overrides})


def test_each_geometric_change_is_applied_when_asked_and_only_then():
    stripes = (torch.arange(48) // 4 % 2).float()
    across = stripes.view(1, 1, 1, 48).expand(8, 1, 48, 48).contiguous()  # varies along x only
    down = stripes.view(1, 1, 48, 1).expand(8, 1, 48, 48).contiguous()  # varies along y only
    rng = lambda: torch.Generator().manual_seed(0)  # noqa: E731

    def moved(x, **overrides):  # images changed by more than interpolation noise
        return int(((random_affine(x, _only(**overrides), rng()) - x).abs().amax(dim=(1, 2, 3)) > 0.05).sum())

    for x in (across, down):
        assert moved(x) == 0
        assert moved(x, max_rotate=20) >= 6
        assert moved(x, max_scale=0.3) >= 6
    assert moved(across, max_shift=4) >= 6  # horizontal shifts
    assert moved(down, max_shift=4) >= 6  # vertical shifts


def test_random_erasing_follows_its_probability_and_size():
    x = torch.ones(32, 1, 48, 48)
    for prob, expected in ((1.0, 32), (0.0, 0)):
        out = augment_batch(x, _only(erase_prob=prob), torch.Generator().manual_seed(0))
        share = (out < 0.5).float().mean(dim=(1, 2, 3))  # the erased part of each face
        assert int((share > 0).sum()) == expected, prob
        assert bool((share <= 0.25).all())
    out = augment_batch(x, _only(erase_prob=0.25), torch.Generator().manual_seed(0))
    assert 2 <= int(((out < 0.5).flatten(1).any(1)).sum()) <= 16
    # the rectangles vary: 2% to 20% of the face, from three times as wide as high to three times as high as wide
    erased = augment_batch(torch.ones(256, 1, 48, 48), _only(erase_prob=1.0), torch.Generator().manual_seed(0))[:, 0] < 0.5
    share = erased.float().mean(dim=(1, 2))
    assert 0.015 <= float(share.min()) < 0.04 and 0.18 < float(share.max()) <= 0.22
    height_over_width = erased.any(2).sum(1) / erased.any(1).sum(1)
    assert float(height_over_width.min()) < 0.5 and float(height_over_width.max()) > 2


def test_augmentation_draws_only_from_the_generator_it_is_given():
    x = torch.rand(8, 1, 48, 48)
    cfg = _cfg()  # every augmentation of the default config
    torch.manual_seed(1)
    first = augment_batch(x, cfg, torch.Generator().manual_seed(5))
    torch.manual_seed(2)  # another global state: same result
    torch.testing.assert_close(augment_batch(x, cfg, torch.Generator().manual_seed(5)), first)
    assert not torch.equal(augment_batch(x, cfg, torch.Generator().manual_seed(6)), first)


def test_with_mixup_and_cutmix_on_each_batch_gets_one_with_its_own_alpha(monkeypatch):
    from ferkit import augment

    alphas = []
    monkeypatch.setattr(augment, "_beta", lambda alpha, generator: alphas.append(alpha) or 0.5)
    b = 8
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, 48, 48).clone()  # face i is all i
    kinds = []
    for seed in range(20):
        alphas.clear()
        mixed_x, _ = mix(x, torch.eye(b), _cfg(mixup=0.2, cutmix=1.0), torch.Generator().manual_seed(seed))
        blended = not torch.equal(mixed_x, mixed_x.round())  # mixup blends whole faces; cutmix pastes pixels
        kinds.append("mixup" if blended else "cutmix")
        assert alphas == [0.2 if blended else 1.0]
    assert 4 <= kinds.count("mixup") <= 16


def test_the_warp_shifts_and_turns_faces_as_far_as_asked_and_fills_the_edges_from_the_border():
    """A blob's centre of mass follows the warp to within 0.01 px: shifts reach max_shift pixels and no more on
    either axis; a rotation keeps a blob off the centre at its distance from it (no shear) and turns it by at most
    max_rotate degrees; and what comes in at an edge continues the face, so a uniform face stays uniform."""
    import math

    ys, xs = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    centre = 23.5  # between the two middle pixels: the warp's origin

    def blobs(cy, cx):
        return torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * 1.5 ** 2)).expand(64, 1, 48, 48).contiguous()

    def offsets(batch):  # (y, x) of each face's centre of mass from the middle
        weights = batch[:, 0] / batch[:, 0].sum(dim=(1, 2), keepdim=True)
        return torch.stack([(weights * ys).sum(dim=(1, 2)), (weights * xs).sum(dim=(1, 2))], 1) - centre

    rng = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    moves = offsets(random_affine(blobs(centre, centre), _only(max_shift=4), rng())).abs()
    assert float(moves.max()) <= 4.01 and float(moves.max(0).values.min()) >= 3.5
    turned = offsets(random_affine(blobs(centre + 8, centre + 8), _only(max_rotate=10), rng()))
    assert float((turned.norm(dim=1) - 8 * math.sqrt(2)).abs().max()) < 0.05
    degrees = torch.rad2deg(torch.atan2(turned[:, 0], turned[:, 1])) - 45
    assert 9 <= float(degrees.abs().max()) <= 10.01 and float(degrees.min()) < 0 < float(degrees.max())
    flat = random_affine(torch.ones(8, 1, 48, 48), _only(max_shift=4, max_rotate=20, max_scale=0.3), rng())
    torch.testing.assert_close(flat, torch.ones_like(flat))


def test_cutmix_pastes_a_box_of_the_share_its_draw_gives_and_the_draws_are_symmetric(monkeypatch):
    """lam = 0.75 pastes a box of 1 - 0.75 of the face (24x24 of 48x48) where it is not cut by an edge; the draws
    are Beta(alpha, alpha), so that neither face of a pair is favoured."""
    from ferkit import augment

    generator = torch.Generator().manual_seed(0)
    draws = torch.tensor([augment._beta(0.4, generator) for _ in range(2000)])
    assert 0.47 < float(draws.mean()) < 0.53 and 0.47 < float((draws < 0.5).float().mean()) < 0.53
    monkeypatch.setattr(augment, "_beta", lambda alpha, generator: 0.75)
    b = 8
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, 48, 48).clone()  # face i is all i
    pasted = []
    for seed in range(20):
        mixed_x, _ = mix(x, torch.eye(b), _cfg(cutmix=1.0), torch.Generator().manual_seed(seed))
        pasted.append(float((mixed_x != x).float().mean(dim=(1, 2, 3)).max()))
    assert max(pasted) == 0.25


def test_train_crop_cuts_a_window_of_the_face_at_its_own_pixel_scale_anywhere_it_fits():
    columns = torch.arange(48).float().view(1, 1, 1, 48).expand(256, 1, 48, 48).contiguous()  # pixel = its column
    rows = columns.transpose(2, 3).contiguous()
    for x in (columns, rows):
        out = random_affine(x, _only(train_crop=40), torch.Generator().manual_seed(0))
        assert out.shape == (256, 1, 40, 40)
        along = out[:, 0, 0, :] if x is columns else out[:, 0, :, 0]
        torch.testing.assert_close(along.diff(dim=1), torch.ones(256, 39), atol=1e-4, rtol=0)  # no zoom
        first = along[:, 0]
        assert float(first.min()) >= 0 and float(first.max()) <= 8  # inside the face: no border smear
        assert float(first.min()) < 1 and float(first.max()) > 7  # and all over it
    # a crop of the whole face is no crop: its place is drawn after the warp's draws, which stay those of a run
    # without a crop (so that every earlier run repeats), and it changes nothing else of the warp
    x = torch.rand(16, 1, 48, 48)
    torch.testing.assert_close(random_affine(x, _cfg(), torch.Generator().manual_seed(3)),
                               random_affine(x, _cfg(train_crop=48), torch.Generator().manual_seed(3)), atol=0, rtol=0)


def test_a_cropped_batch_takes_the_rest_of_the_augmentation_and_mixing():
    cfg = _cfg(train_crop=32, cutmix=1.0)
    x = augment_batch(torch.rand(32, 1, 48, 48), cfg, torch.Generator().manual_seed(0))
    assert x.shape == (32, 1, 32, 32)
    mixed, targets = mix(x, torch.eye(7)[torch.arange(32) % 7], cfg, torch.Generator().manual_seed(0))
    assert mixed.shape == x.shape and torch.allclose(targets.sum(1), torch.ones(32))
