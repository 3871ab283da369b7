"""The image modality plugin: sources, conditions, files and metrics."""

from __future__ import annotations

import gzip
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmldm.interfaces import Modality
from mmldm.plugins import load_plugins
from mmldm_image.config import ImageConfig
from mmldm.evaluation.frechet import frechet_distance, frechet_distance_from_stats
from mmldm_image.metrics import psnr, ssim
from mmldm_image.modality import ImageModality, flip_caption
from mmldm_image.shapes import COLOURS, SHAPES
from mmldm_image.sources import read_idx

MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


def make(**kw) -> ImageModality:
    return ImageModality(ImageConfig(name="image", **kw))


def stack(ds, n=None):
    return torch.stack([ds[i]["x"] for i in range(n or len(ds))])


def test_registered_as_modality():
    reg = load_plugins(report=False).registry
    comp = reg.get("modality", "image")
    assert comp.config is ImageConfig
    m = reg.build("modality", {"name": "image", "num_samples": 10})
    assert isinstance(m, Modality) and m.dims == 2 and m.sample_shape == (3, 32, 32)


def test_shapes_deterministic_under_seed():
    a, b, c = (make(num_samples=20, seed=s).dataset("train") for s in (0, 0, 1))
    assert torch.equal(stack(a), stack(b))
    assert [a[i]["cond"]["text"] for i in range(18)] == [b[i]["cond"]["text"] for i in range(18)]
    assert not torch.equal(stack(a), stack(c))


def test_shapes_items_shapes_ranges_and_split():
    m = make(num_samples=50, val_fraction=0.2)
    train, val = m.dataset("train"), m.dataset("val")
    assert (len(train), len(val)) == (40, 10)
    item = train[0]
    assert item["x"].shape == (3, 32, 32) and item["x"].dtype == torch.float32
    x = stack(train)
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.1
    assert item["cond"]["segmentation"].shape == (1, 32, 32) and item["cond"]["segmentation"].dtype == torch.long
    gray = make(num_samples=4, channels=1).dataset("train")[0]["x"]
    assert gray.shape == (1, 32, 32)
    with pytest.raises(ValueError, match="split 'test'"):
        m.dataset("test")


def test_shapes_masks_and_captions_match_the_class():
    ds = make(num_samples=60).dataset("train")
    for i in range(len(ds)):
        item = ds[i]
        k, text, mask = item["cond"]["class"], item["cond"]["text"], item["cond"]["segmentation"][0]
        assert set(mask.unique().tolist()) == {0, k + 1}
        assert f" {SHAPES[k]} " in f" {text} "
        colour = next(c for c in COLOURS if f" {c} " in text)
        inside = (item["x"][:, mask > 0] + 1) * 127.5  # (3, n_pixels)
        # pixels well inside the shape carry its colour (edges are blended)
        assert np.allclose(inside.median(dim=1).values.numpy(), COLOURS[colour], atol=12), text


def test_flip_augmentation_flips_mask_and_caption():
    assert flip_caption("a small red star on the left") == "a small red star on the right"
    plain = make(num_samples=30).dataset("train")
    flipped = make(num_samples=30, flip=True).dataset("train")
    torch.manual_seed(0)
    seen = 0
    for i in range(len(plain)):
        a, b = plain[i], flipped[i]
        if not torch.equal(a["x"], b["x"]):
            seen += 1
            assert torch.equal(a["x"].flip(-1), b["x"])
            assert torch.equal(a["cond"]["segmentation"].flip(-1), b["cond"]["segmentation"])
            assert b["cond"]["text"] == flip_caption(a["cond"]["text"])
    assert 0 < seen < len(plain)
    val = make(num_samples=30, flip=True).dataset("val")  # never flipped
    assert all(torch.equal(val[0]["x"], val[0]["x"]) for _ in range(5))


def test_random_crop_translates_image_and_mask_together():
    plain, cropped = make(num_samples=8, val_fraction=0.5), make(num_samples=8, val_fraction=0.5, crop=3)
    torch.manual_seed(0)
    moved = 0
    for i in range(4):
        a, b = plain.dataset("train")[i], cropped.dataset("train")[i]
        assert b["x"].shape == a["x"].shape and b["cond"]["segmentation"].dtype == torch.long
        # some shift (dy, dx) in [-3, 3]^2 maps the padded original onto the crop, for image and mask alike
        pad = lambda t: torch.nn.functional.pad(t[None].float(), (3, 3, 3, 3), mode="reflect")[0]
        px, pm = pad(a["x"]), pad(a["cond"]["segmentation"])
        hits = [(dy, dx) for dy in range(7) for dx in range(7)
                if torch.equal(px[:, dy:dy + 32, dx:dx + 32], b["x"])
                and torch.equal(pm[:, dy:dy + 32, dx:dx + 32].long(), b["cond"]["segmentation"])]
        assert hits, f"item {i}: the crop is no window of the padded image"
        moved += hits[0] != (3, 3)
    assert moved >= 2
    assert torch.equal(cropped.dataset("val")[0]["x"], plain.dataset("val")[0]["x"])  # val is never cropped
    with pytest.raises(ValueError, match=r"image.crop=16 must be >= 0 and below image.size / 2 = 16"):
        make(crop=16)


def test_digits_source_is_grayscale_and_padded():
    m = make(source="digits")
    train, val = m.dataset("train"), m.dataset("val")
    assert len(train) + len(val) == 1797 and len(val) == 180
    x = stack(train, 50)
    assert x.shape == (50, 1, 32, 32) and x.min() == -1 and x.max() <= 1
    assert (x[..., :4, :] == -1).all() and (x[..., :, -4:] == -1).all()  # 24-pixel digit padded by 4
    assert m.num_classes == 10 and train[0]["cond"]["text"] == f"a handwritten digit {train[0]['cond']['class']}"
    item = train[3]  # the mask: label + 1 where the digit is bright (>= 128 of 255), 0 elsewhere
    mask, bright = item["cond"]["segmentation"], item["x"] >= 128 / 127.5 - 1
    assert mask.shape == (1, 32, 32) and m.segmentation_classes == 11
    assert torch.equal(mask > 0, bright) and set(mask.unique().tolist()) == {0, item["cond"]["class"] + 1}
    with pytest.raises(ValueError, match="image.channels=3 .* grayscale"):
        make(source="digits", channels=3)


def test_read_idx_handmade(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(int(s).to_bytes(4, "big") for s in data.shape)
    with gzip.open(tmp_path / "x-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + data.tobytes())
    assert np.array_equal(read_idx(tmp_path / "x-images-idx3-ubyte.gz"), data)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


@pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST IDX files not found at {MNIST}")
def test_mnist_split_and_padding():
    m = make(source="mnist", root=str(MNIST))
    train, val = m.dataset("train"), m.dataset("val")
    assert (len(train), len(val)) == (9000, 1000)
    raw = read_idx(MNIST / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(MNIST / "t10k-labels-idx1-ubyte.gz")
    first_val = val[0]
    assert first_val["x"].shape == (1, 32, 32)
    # the last 1000 are val, in file order; 28x28 centred with a 2-pixel border
    expected = torch.from_numpy(raw[9000].astype(np.float32)) / 127.5 - 1
    assert torch.allclose(first_val["x"][0, 2:30, 2:30], expected)
    assert (first_val["x"][0, :2] == -1).all() and first_val["cond"]["class"] == int(labels[9000])
    assert train[8999]["cond"]["class"] == int(labels[8999])


def write_png(path: Path, colour, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_folder_labels_sidecars_and_corrupt_files(tmp_path, caplog):
    for i in range(3):
        write_png(tmp_path / "cats" / f"c{i}.png", (200, 0, 0))
        write_png(tmp_path / "dogs" / f"d{i}.jpg", (0, 0, 200))
    (tmp_path / "cats" / "c0.txt").write_text("a red cat\n")
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not a png at all")
    m = make(source="folder", root=str(tmp_path), val_fraction=0.0)
    ds = m.dataset("train")
    assert re.search(r"skipped 1 unreadable file\(s\): dogs/broken.png \(\w+", caplog.text)
    assert len(ds) == 6 and m.class_names == ["cats", "dogs"] and m.segmentation_classes == 0
    by_text = {ds[i]["cond"]["text"]: ds[i] for i in range(6)}
    assert by_text["a red cat"]["cond"]["class"] == 0
    assert "an image of a dogs" in by_text
    dog = by_text["an image of a dogs"]
    assert dog["cond"]["class"] == 1 and dog["x"].shape == (3, 32, 32)
    assert torch.allclose(dog["x"][:, 5, 5], torch.tensor([-1.0, -1.0, 200 / 127.5 - 1]), atol=0.02)


def test_folder_mask_sidecar(tmp_path):
    write_png(tmp_path / "a.png", (10, 10, 10), size=(32, 32))
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 3
    Image.fromarray(mask).save(tmp_path / "a.mask.png")
    ds = make(source="folder", root=str(tmp_path), val_fraction=0.0).dataset("train")
    assert len(ds) == 1 and "class" not in ds[0]["cond"]
    assert torch.equal(ds[0]["cond"]["segmentation"][0], torch.from_numpy(mask.astype(np.int64)))


def test_save_writes_pngs_and_grid(tmp_path):
    x = stack(make(num_samples=6, val_fraction=0).dataset("train"))
    paths = make(num_samples=6).save(x, tmp_path / "out", prefix="s")
    assert [p.name for p in paths] == [f"s_{i:04d}.png" for i in range(6)] + ["s_grid.png"]
    back = torch.from_numpy(np.array(Image.open(paths[2]))).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(back, x[2], atol=1 / 127.5)
    assert Image.open(paths[-1]).size == (3 * 34 + 2, 2 * 34 + 2)


def test_save_reconstructions_puts_inputs_above_reconstructions(tmp_path):
    x = stack(make(num_samples=4, val_fraction=0).dataset("train"))
    paths = make(num_samples=4).save_reconstructions(x, -x, tmp_path)
    assert paths[-1].name == "comparison.png" and (tmp_path / "input_grid.png").is_file()
    sheet = np.array(Image.open(paths[-1]))
    assert sheet.shape == (2 * 34 + 2, 4 * 34 + 2, 3)
    top = torch.from_numpy(sheet[2:34, 36:68]).permute(2, 0, 1).float() / 127.5 - 1  # input 1
    bottom = torch.from_numpy(sheet[36:68, 36:68]).permute(2, 0, 1).float() / 127.5 - 1  # its reconstruction
    assert torch.allclose(top, x[1], atol=1 / 127.5) and torch.allclose(bottom, -x[1], atol=1 / 127.5)


def test_psnr_and_ssim():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g) - 0.5  # in [-0.5, 0.5]: noise never clips
    assert math.isinf(psnr(x, x)) or psnr(x, x) > 100
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    delta = 0.1
    signs = torch.randint(0, 2, x.shape, generator=g) * 2 - 1
    noisy = x + delta * signs
    # MSE on [0, 1] images is (delta / 2)^2 -> PSNR = 10 log10(1 / MSE)
    assert psnr(x, noisy) == pytest.approx(10 * math.log10(1 / (delta / 2) ** 2), abs=1e-3)
    assert ssim(x, noisy) < 0.95
    metrics = make(num_samples=2).reconstruction_metrics(x, noisy)
    assert set(metrics) == {"psnr", "ssim"} and metrics["psnr"] == pytest.approx(26.0206, abs=1e-3)


def test_frechet_distance_hand_computed_gaussians():
    # diagonal covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 = 5 + (1 - 2)^2 + (2 - 3)^2 = 7
    mu1, s1 = np.array([0.0, 0.0]), np.diag([1.0, 4.0])
    mu2, s2 = np.array([1.0, 2.0]), np.diag([4.0, 9.0])
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(7.0, abs=1e-9)
    full = np.array([[2.0, 0.8], [0.8, 1.0]])
    assert frechet_distance_from_stats(mu1, full, mu2, full) == pytest.approx(5.0, abs=1e-6)
    rng = np.random.default_rng(0)
    a = rng.normal(mu1, np.sqrt(np.diag(s1)), size=(20000, 2))
    b = rng.normal(mu2, np.sqrt(np.diag(s2)), size=(20000, 2))
    assert frechet_distance(a, b) == pytest.approx(7.0, rel=0.05)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        frechet_distance_from_stats(mu1, s1, np.zeros(3), np.eye(3))


def test_image_text_preset_composes_the_measured_text_recipe_on_captioned_scenes():
    """``preset=image_text``: the captioned scenes with the recipe of the composition studies (rectified flow,
    caption tokens for cross-attention and their mean as a vector); command-line choices still win."""
    from mmldm.build import build_modality
    from mmldm.configuration import compose

    cfg = compose(["modality=image", "preset=image_text", "modality.num_samples=40"])
    assert (cfg.modality.source, cfg.conditioner.name, list(cfg.conditioner.outputs)) == (
        "shapes", "text", ["crossattn", "vector"])
    assert cfg.diffusion.process.name == "flow"
    assert cfg.autoencoder == compose(["modality=image", "autoencoder=conv_image"]).autoencoder
    item = build_modality(cfg.modality).dataset("train")[0]
    assert isinstance(item["cond"]["text"], str) and item["cond"]["text"].startswith("a ")
    cfg = compose(["modality=image", "preset=image_text", "process=vp", "conditioner.outputs=[crossattn]"])
    assert cfg.diffusion.process.name == "vp" and list(cfg.conditioner.outputs) == ["crossattn"]
