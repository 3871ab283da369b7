"""Editing a person's own files: ``Modality.load`` of each built-in modality, the region grammar
(:mod:`mmldm.regions`) and the modalities' named regions, and ``mmldm edit`` end to end on tiny untrained
exports (one-line errors with exit code 2)."""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402


def _modality(*overrides: str):
    from mmldm.build import build_modality
    from mmldm.configuration import compose

    return build_modality(compose(list(overrides)).modality)


@pytest.fixture(scope="module")
def image(one_thread):
    return _modality("modality=image", "modality.num_samples=12")


@pytest.fixture(scope="module")
def voxel(one_thread):
    return _modality("modality=voxel", "modality.resolution=16", "modality.num_shapes=12")


@pytest.fixture(scope="module")
def audio(one_thread):
    return _modality("modality=audio", "modality.num_samples=12")


# ------------------------------------------------------------------------------------------------- load
def test_image_round_trip_and_conversions(image, tmp_path):
    x = image.dataset("val")[0]["x"]
    png = image.save(x[None], tmp_path, prefix="in")[0]
    assert torch.equal(image.load(png), x)  # save -> load: the same [-1, 1] values (exact uint8 steps)
    Image.fromarray(np.full((48, 64), 255, np.uint8)).save(tmp_path / "grey.jpg")  # grey, not square, JPEG
    loaded = image.load(tmp_path / "grey.jpg")
    assert loaded.shape == (3, 32, 32) and loaded.min() >= 0.99  # grey -> RGB by copy, white stays 1
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = rgba[..., 3] = 255  # opaque pure red (the alpha channel is dropped)
    Image.fromarray(rgba).save(tmp_path / "red.png")
    red = image.load(tmp_path / "red.png")
    assert red.shape == (3, 32, 32) and torch.allclose(red[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    gray = _modality("modality=image", "modality.num_samples=12", "modality.channels=1").load(tmp_path / "red.png")
    assert gray.shape == (1, 32, 32) and abs(float(gray[0, 0, 0]) - (76 / 127.5 - 1)) < 1e-6  # ITU-R 601 luma


@pytest.mark.parametrize("overrides", [(), ("modality.representation=sdf",), ("preset=voxel_2d",)],
                         ids=["occupancy", "sdf", "layout2d"])
def test_voxel_sample_files_round_trip(tmp_path, one_thread, overrides):
    voxel = _modality("modality=voxel", "modality.resolution=16", "modality.num_shapes=12", *overrides)
    x = voxel.dataset("val")[0]["x"]
    paths = voxel.save(x[None], tmp_path, prefix="in")
    npz, ply = paths[0], paths[1]
    assert npz.suffix == ".npz" and ply.suffix == ".ply"
    assert torch.equal(voxel.load(npz), x)  # the grid file is read by value
    mesh = voxel.load(ply)  # the mesh is voxelized again (rescaled to fill the unit cube)
    assert mesh.shape == x.shape == voxel.sample_shape and torch.isfinite(mesh).all()
    assert voxel.occupancy(mesh[None]).any()


def test_voxel_reads_probabilities_other_sizes_obj_and_binvox(voxel, tmp_path):
    probabilities = np.zeros((32, 32, 32), np.float32)
    probabilities[8:24, 8:24, 8:24] = 0.8
    np.save(tmp_path / "p.npy", probabilities)
    grid = voxel.load(tmp_path / "p.npy")
    assert grid.shape == (1, 16, 16, 16) and set(grid.unique().tolist()) == {0.0, 1.0}
    assert grid[0, 4:12, 4:12, 4:12].all() and grid.sum() == 8**3  # resized by nearest neighbour
    v = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float)
    quads = [(1, 2, 4, 3), (5, 7, 8, 6), (1, 5, 6, 2), (3, 4, 8, 7), (1, 3, 7, 5), (2, 6, 8, 4)]  # a closed cube
    (tmp_path / "cube.obj").write_text("".join(f"v {a} {b} {c}\n" for a, b, c in v)
                                       + "".join(f"f {' '.join(map(str, q))}\n" for q in quads))
    cube = voxel.load(tmp_path / "cube.obj")
    assert cube.shape == (1, 16, 16, 16) and cube[0, 1:15, 1:15, 1:15].all() and cube.sum() == 14**3
    occupied = np.zeros((8, 8, 8), np.uint8)
    occupied[2:6, 2:6, 2:6] = 1
    runs = [(int(value), 1) for value in occupied.transpose(0, 2, 1).reshape(-1)]  # binvox order: x, z, y
    (tmp_path / "b.binvox").write_bytes(b"#binvox 1\ndim 8 8 8\ntranslate 0 0 0\nscale 1\ndata\n"
                                        + bytes(b for pair in runs for b in pair))
    assert voxel.load(tmp_path / "b.binvox")[0, 4:12, 4:12, 4:12].all()


def test_audio_wav_is_analysed_as_the_dataset_does(audio, tmp_path):
    import soundfile as sf

    wave = audio.waveforms("val").waves[0]  # exactly one clip long: the dataset neither crops nor pads it
    sf.write(tmp_path / "clip.wav", wave.numpy(), audio.sample_rate, subtype="FLOAT")
    assert torch.equal(audio.load(tmp_path / "clip.wav"), audio.dataset("val")[0]["x"])
    sf.write(tmp_path / "long.wav", np.tile(wave.numpy(), 3), audio.sample_rate, subtype="FLOAT")
    assert torch.equal(audio.load(tmp_path / "long.wav"), audio.dataset("val")[0]["x"])  # cut after one clip
    sf.write(tmp_path / "short.wav", wave[:4000].numpy(), audio.sample_rate, subtype="FLOAT")
    padded = torch.nn.functional.pad(wave[:4000], (0, audio.length - 4000))  # zeros at the end: times kept
    assert torch.allclose(audio.load(tmp_path / "short.wav"), audio.features(padded[None])[0])
    wav = audio.save(audio.dataset("val")[0]["x"][None], tmp_path, prefix="out")[0]  # vocoded, 16-bit
    back = audio.load(wav)
    assert back.shape == audio.sample_shape == (1, 64, 64) and torch.isfinite(back).all()


def test_audio_layout_1d(tmp_path, one_thread):
    import soundfile as sf

    audio = _modality("modality=audio", "preset=audio_1d", "modality.num_samples=12")
    sf.write(tmp_path / "clip.wav", audio.waveforms("val").waves[0].numpy(), audio.sample_rate)
    assert audio.load(tmp_path / "clip.wav").shape == audio.sample_shape == (64, 64)
    assert audio.region_mask("gap:0-0.5").shape == (1, 64)


@pytest.mark.parametrize("name, content, message", [
    ("a.txt", b"hello", "cannot load as a sample of the {m} modality: unknown file type '.txt'; expected"),
    ("missing.{s}", None, "cannot load as a sample of the {m} modality: no such file"),
    ("broken.{s}", b"not really a file of this kind", "{broken}"),
])
@pytest.mark.parametrize("which, suffix, broken", [
    ("image", "png", "cannot load as a sample of the image modality: cannot decode image"),
    ("voxel", "npz", "cannot read"),
    ("audio", "wav", "cannot load as a sample of the audio modality: cannot decode"),
])
def test_bad_files_name_the_file_and_what_was_expected(request, tmp_path, which, suffix, broken, name, content,
                                                       message):
    modality = request.getfixturevalue(which)
    path = tmp_path / name.format(s=suffix)
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError) as e:
        modality.load(path)
    assert str(e.value).startswith(f"{path}: ") and message.format(m=which, broken=broken) in str(e.value)


def test_voxel_array_of_the_wrong_shape(voxel, tmp_path):
    np.save(tmp_path / "flat.npy", np.ones((16, 16), np.float32))
    with pytest.raises(ValueError, match=r"flat.npy: expected a 3D grid, got shape \(16, 16\)"):
        voxel.load(tmp_path / "flat.npy")
    np.save(tmp_path / "empty.npy", np.zeros((16, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"empty.npy: the grid is empty"):
        voxel.load(tmp_path / "empty.npy")


def test_a_modality_without_load_says_so(tmp_path):
    from mmldm.interfaces import Modality

    class Bare(Modality):
        name, dims, channels = "bare", 1, 1
        sample_shape = (1, 8)
        dataset = save = reconstruction_metrics = None

    with pytest.raises(NotImplementedError, match=r"the bare modality \(Bare\) cannot read files: .*'x.dat'"):
        Bare().load("x.dat")
    with pytest.raises(ValueError, match=r"unknown region 'top' for the bare modality; its regions: "
                                         r"box:<lo>-<hi>,\.\.\.$"):
        Bare().region_mask("top")
    assert Bare().region_mask("box:0.25-0.5")[0].tolist() == [0, 0, 1, 1, 0, 0, 0, 0]


# ------------------------------------------------------------------------------------------------ regions
def test_box_cells_are_those_whose_centres_lie_in_the_range():
    from mmldm.regions import box_mask, cells

    assert cells(0.25, 0.75, 8) == slice(2, 6) and cells(0.0, 1.0, 5) == slice(0, 5)
    assert cells(0.0, 0.1, 4) == slice(0, 0)  # the first centre is at 0.125
    mask = box_mask([(0.5, 1.0), (0.0, 0.25)], (4, 8))
    assert mask.shape == (1, 4, 8) and mask.sum() == 2 * 2 and mask[0, 2:, :2].all()


def test_image_regions(image):
    bottom = image.region_mask("bottom")
    assert bottom.shape == (1, 32, 32) and bottom[0, 16:].all() and not bottom[0, :16].any()
    assert torch.equal(bottom, image.region_mask("box:0.5-1,0-1"))
    assert image.region_mask("top")[0, :16].all() and image.region_mask("top").sum() == 512
    left, right = image.region_mask("left"), image.region_mask("right")
    assert left[0, :, :16].all() and not left[0, :, 16:].any() and torch.equal(left + right, torch.ones(1, 32, 32))
    center = image.region_mask("center")
    assert center[0, 8:24, 8:24].all() and center.sum() == 16 * 16
    assert set(image.region_names()) == {"top", "bottom", "left", "right", "center"}


def test_voxel_half_spaces(voxel):
    half = slice(0, 8), slice(8, 16)
    for axis, name in enumerate("xyz"):
        for side, cells in zip("-+", half):
            mask = voxel.region_mask(f"{name}{side}")
            index = [0, slice(None), slice(None), slice(None)]
            index[1 + axis] = cells
            assert mask.shape == (1, 16, 16, 16) and mask.sum() == 16**3 / 2 and mask[tuple(index)].all(), name + side


def test_voxel_half_spaces_of_the_folded_layout(one_thread):
    folded = _modality("modality=voxel", "preset=voxel_2d", "modality.resolution=16", "modality.num_shapes=12")
    x_minus = folded.region_mask("x-")  # grid axis x is the channels
    assert x_minus.shape == (16, 16, 16) and x_minus[:8].all() and not x_minus[8:].any()
    y_plus = folded.region_mask("y+")
    assert y_plus.shape == (1, 16, 16) and y_plus[0, 8:].all() and not y_plus[0, :8].any()


def test_audio_gap_in_seconds(audio):
    assert audio.frame_rate == 16000 / 256
    gap = audio.region_mask("gap:0.25-0.5")  # frames centred at t / 62.5 s in [0.25, 0.5): 16..31
    assert gap.shape == (1, 64, 64) and gap[0, :, 16:32].all() and gap.sum() == 64 * 16
    assert audio.region_mask("box:0-1,0.25-0.5").sum() == 64 * 16  # (mel bin, time) in the 2D layout


@pytest.mark.parametrize("which, spec, message", [
    ("image", "middle", "unknown region 'middle' for the image modality; its regions: box:<lo>-<hi>,..., top, "
                        "bottom, left, right, center"),
    ("voxel", "w+", "unknown region 'w+' for the voxel modality; its regions: box:<lo>-<hi>,..., x-, x+, y-, y+, "
                    "z-, z+"),
    ("audio", "gap", "region 'gap': write it as 'gap:<start_s>-<end_s>'"),
    ("image", "top:1", "region 'top:1': write it as 'top'"),
    ("audio", "gap:2-3", "region 'gap:2-3' holds no frame: times are seconds within the clip, 0-1.01 s"),
    ("audio", "gap:0.5-0.2", "region 'gap:0.5-0.2': '0.5-0.2' is not a range <lo>-<hi> of two numbers with lo < hi"),
    ("image", "box:0.5-1", "region 'box:0.5-1' has 1 range(s); the samples have 2 spatial axes (32, 32): give one "
                           "<lo>-<hi> per axis, e.g. box:0.5-1,0-1"),
    ("image", "box:0-2,0-1", "region 'box:0-2,0-1': ranges are fractions of each axis, within 0-1"),
    ("image", "box:0-0.01,0-1", "region 'box:0-0.01,0-1' holds no cell of the 32x32 grid"),
])
def test_region_errors(request, which, spec, message):
    with pytest.raises(ValueError) as e:
        request.getfixturevalue(which).region_mask(spec)
    assert message in str(e.value)


def test_mask_files(image, voxel, audio, tmp_path):
    from mmldm.regions import read_mask, resolve_mask

    picture = np.zeros((64, 64, 3), np.uint8)
    picture[32:] = 255  # white lower half = generate
    Image.fromarray(picture).save(tmp_path / "mask.png")
    assert torch.equal(resolve_mask(image, str(tmp_path / "mask.png")), image.region_mask("bottom"))
    np.save(tmp_path / "mask.npy", image.region_mask("left")[0].numpy())  # [H, W]: a channel axis is added
    assert torch.equal(read_mask(image, tmp_path / "mask.npy"), image.region_mask("left"))
    np.save(tmp_path / "small.npy", np.ones((1, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"mask shape mismatch: .*small.npy has shape \[1, 16, 16\], the model's "
                                         r"samples are \[3, 32, 32\]: expected \[1 or 3, 32, 32\]"):
        read_mask(image, tmp_path / "small.npy")
    x = voxel.dataset("val")[0]["x"]
    npz = voxel.save(x[None], tmp_path / "v", prefix="shape")[0]
    assert torch.equal(read_mask(voxel, npz), x)  # a voxel mask file: the inside of its shape
    np.save(tmp_path / "frames.npy", audio.region_mask("gap:0.1-0.2").numpy())
    assert torch.equal(read_mask(audio, tmp_path / "frames.npy"), audio.region_mask("gap:0.1-0.2"))
    wav = audio.save(audio.dataset("val")[0]["x"][None], tmp_path / "a", prefix="clip")[0]
    with pytest.raises(ValueError, match=r"a sound file is no mask; give the frames to generate as a region"):
        read_mask(audio, wav)
    with pytest.raises(ValueError, match=r"mask=nowhere.png: no such file, and not a region of the image modality "
                                         r"\(its regions: box:<lo>-<hi>,\.\.\., top,"):
        resolve_mask(image, "nowhere.png")


def test_erase_blanks_the_region_with_the_modality_s_nothing(image, voxel, audio):
    x = image.dataset("val")[0]["x"][None]
    erased = image.erase(x, image.region_mask("top"))
    assert (erased[..., :16, :] == 0).all() and torch.equal(erased[..., 16:, :], x[..., 16:, :])
    sdf = _modality("modality=voxel", "modality.resolution=16", "modality.num_shapes=12",
                    "modality.representation=sdf")
    grid = sdf.dataset("val")[0]["x"][None]
    assert (sdf.erase(grid, sdf.region_mask("x+"))[:, :, 8:] == 1).all()  # outside
    clip = audio.dataset("val")[0]["x"][None]
    silent = audio.to_logmel(audio.erase(clip, audio.region_mask("gap:0-0.5")))
    assert torch.allclose(silent[..., :32], torch.tensor(np.log(audio.cfg.log_floor), dtype=torch.float32), atol=1e-4)


# ---------------------------------------------------------------------------------------------------- CLI
TINY = {
    "image": ["modality=image", "modality.num_samples=12", "autoencoder.channels=8", "autoencoder.norm_groups=8",
              "denoiser.model_channels=16", "denoiser.channel_mult=[1,2]", "denoiser.attention_levels=[1]",
              "conditioner.num_classes=3", "sampler.steps=2"],
    "voxel": ["modality=voxel", "preset=voxel_quick", "modality.num_shapes=12", "autoencoder.channels=8",
              "autoencoder.norm_groups=8", "sampler.steps=2"],
    "audio": ["modality=audio", "modality.num_samples=12", "autoencoder.channels=8", "autoencoder.norm_groups=8",
              "denoiser.model_channels=16", "denoiser.channel_mult=[1,2]", "denoiser.attention_levels=[1]",
              "sampler.steps=2"],
}


def _export(which: str, directory, with_denoiser: bool = True):
    """A tiny untrained model of modality ``which``, exported (without a denoiser: phase 1 only)."""
    from mmldm.build import build_autoencoder, build_conditioners, build_denoiser, build_modality
    from mmldm.configuration import compose
    from mmldm.latents import LatentStats
    from mmldm.pipeline import LatentDiffusion

    torch.manual_seed(0)
    cfg = compose(TINY[which])
    modality = build_modality(cfg.modality)
    autoencoder = build_autoencoder(cfg.autoencoder, cfg.regularizer, modality)
    shape = autoencoder.latent_shape(modality.sample_shape)
    keys = ("modality", "autoencoder", "regularizer", "denoiser", "conditioner", "diffusion", "sampler")
    if not with_denoiser:
        pipe = LatentDiffusion(modality, autoencoder, LatentStats.identity(shape[0]), {k: cfg[k] for k in keys[:3]})
        return pipe.save_pretrained(directory)
    conditioners = build_conditioners(cfg.conditioner, modality, shape)
    denoiser = build_denoiser(cfg.denoiser, shape, conditioners)
    pipe = LatentDiffusion(modality, autoencoder, LatentStats.identity(shape[0]), {k: cfg[k] for k in keys},
                           denoiser, conditioners)
    return pipe.save_pretrained(directory)


@pytest.fixture(scope="module")
def image_export(tmp_path_factory, one_thread):
    return _export("image", tmp_path_factory.mktemp("image") / "export")


@pytest.fixture(scope="module")
def picture(image, tmp_path_factory):
    """Two held-out images of the image modality as PNG files."""
    folder = tmp_path_factory.mktemp("pictures")
    data = image.dataset("train")
    return [image.save(data[i]["x"][None], folder, prefix=f"p{i}")[0] for i in (0, 1)]


def _edit(capsys, model, *settings):
    from mmldm.cli import main

    code = main(["edit", str(model), *map(str, settings)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line(err: str) -> str:
    assert err.startswith("mmldm edit: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_inpaint_keeps_the_rest_of_the_picture(capsys, image_export, picture, tmp_path):
    code, out, err = _edit(capsys, image_export, "op=inpaint", f"input={picture[0]}", "mask=bottom", "n=2",
                           "class=1", f"out={tmp_path}", "seed=3")
    assert code == 0, err
    assert out.strip() == f"mmldm edit: wrote 7 files to {tmp_path}"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["inpaint_0000.png", "inpaint_0001.png", "inpaint_grid.png", "input_0000.png", "input_grid.png",
                     "masked_0000.png", "masked_grid.png"]
    given = _png(picture[0])
    for result in ("inpaint_0000.png", "inpaint_0001.png"):
        assert np.array_equal(_png(tmp_path / result)[:16], given[:16])  # the kept upper half, exactly
    assert not np.array_equal(_png(tmp_path / "inpaint_0000.png")[16:], given[16:])
    masked = _png(tmp_path / "masked_0000.png")
    assert (masked[16:] == 128).all() and np.array_equal(masked[:16], given[:16])  # the region blanked grey


def image_export_classes() -> list[str]:
    from mmldm.build import build_modality
    from mmldm.configuration import compose

    return list(build_modality(compose(TINY["image"]).modality).class_names)


def test_inpaint_and_vary_infer_the_class_and_say_which(capsys, image_export, picture, tmp_path):
    code, out, err = _edit(capsys, image_export, "op=inpaint", f"input={picture[0]}", "mask=bottom", "n=2",
                           "infer=class", "steps=2", f"out={tmp_path / 'inpaint'}")
    assert code == 0, err
    inferred = re.fullmatch(r"mmldm edit: inferred class (\d) \((\w+)\) from the kept region, probability "
                            r"(0\.\d\d|1\.00)",
                            out.splitlines()[0])
    assert inferred and inferred[2] == image_export_classes()[int(inferred[1])] and out.splitlines()[1].startswith("mmldm edit: wrote 7 files")
    given = _png(picture[0])
    assert np.array_equal(_png(tmp_path / "inpaint" / "inpaint_0001.png")[:16], given[:16])
    code, out, err = _edit(capsys, image_export, "op=vary", f"input={picture[0]}", "n=1", "infer=class", "steps=2",
                           f"out={tmp_path / 'vary'}")
    assert code == 0, err
    assert re.match(r"mmldm edit: inferred class \d \(\w+\) from the input, probability ", out)


def test_vary_and_interpolate(capsys, image_export, picture, tmp_path):
    code, out, err = _edit(capsys, image_export, "op=vary", f"input={picture[0]}", "n=3", "strength=0.5",
                           "sampler=ddim", "eta=0.5", f"out={tmp_path / 'vary'}")
    assert code == 0, err
    assert {p.name for p in (tmp_path / "vary").iterdir()} >= {"vary_0002.png", "input_0000.png", "vary_grid.png"}
    code, out, err = _edit(capsys, image_export, "op=interpolate", f"input={picture[0]}", f"input2={picture[1]}",
                           "n=3", "steps=2")
    assert code == 0, err
    written = image_export / "edits" / "interpolate"  # the default: <model>/edits/<op>
    assert out.strip() == f"mmldm edit: wrote 7 files to {written}"
    assert {p.name for p in written.iterdir()} == {"input_0000.png", "input_0001.png", "input_grid.png",
                                                    "interpolate_0000.png", "interpolate_0001.png",
                                                    "interpolate_0002.png", "interpolate_grid.png"}


@pytest.mark.parametrize("settings, message", [
    (["input=a.png"], "missing setting 'op': give op=<inpaint|vary|interpolate>"),
    (["op=fill", "input=a.png"], "invalid value 'fill' for 'op': expected one of: inpaint, vary, interpolate"),
    (["op=vary"], "missing setting 'input': give input=<file> (the file to vary)"),
    (["op=inpaint", "input=a.png"], "op=inpaint needs mask=<region or file>"),
    (["op=interpolate", "input=a.png"], "op=interpolate needs input2=<file>"),
    (["op=vary", "input=a.png", "mask=top"], "'mask=' is a setting of op=inpaint, not of op=vary; drop it"),
    (["op=interpolate", "input=a", "input2=b", "seed=1"], "'seed=' is a setting of op=inpaint and op=vary, not of "
                                                          "op=interpolate"),
    (["op=interpolate", "input=a", "input2=b", "eta=1"], "unknown setting 'eta' for op=interpolate: it inverts and "
                                                         "samples with euler and takes no sampler option"),
    (["op=interpolate", "input=a", "input2=b", "n=1"], "an interpolation has n >= 2 frames"),
    (["op=interpolate", "input=a", "input2=b", "class=0,1"], "an interpolation takes one class for every frame"),
    (["op=vary", "input=a", "strength=0"], "invalid value '0' for 'strength': expected in (0, 1]"),
    (["op=vary", "input=a", "strength=x"], "invalid value 'x' for 'strength': expected a number in (0, 1]"),
    (["op=inpaint", "input=a", "mask=top", "resample=0"], "invalid value '0' for 'resample': expected >= 1"),
    (["op=vary", "input=a", "n=0"], "invalid value '0' for 'n': expected >= 1"),
    (["op=vary", "input=a", "oops"], "unknown setting 'oops'; valid keys: op, input, input2, mask, strength, n,"),
    (["op=vary", "input=a", "method=trained"], "'method=' is a setting of op=inpaint, not of op=vary"),
    (["op=inpaint", "input=a", "mask=top", "method=trained", "resample=2"], "resample= steer method=training_free; "
                                                                          "drop them with method=trained"),
    (["op=inpaint", "input=a", "mask=top", "method=trained", "guidance=2"],
     "guidance=2 with method=trained guides the condition given beside the known region, and none is: give class= "
     "or text=, or drop guidance="),
    (["op=inpaint", "input=a", "mask=top", "method=trained", "reconstruction_guidance=1", "jump_length=2"],
     "jump_length= and reconstruction_guidance= steer method=training_free"),
    (["op=inpaint", "input=a", "mask=top", "reconstruction_guidance=-1"],
     "invalid value '-1' for 'reconstruction_guidance': expected >= 0"),
    (["op=vary", "input=a", "reconstruction_guidance=1"], "'reconstruction_guidance=' is a setting of op=inpaint"),
    (["op=interpolate", "input=a", "input2=b", "infer=class"], "'infer=' is a setting of op=inpaint and op=vary, "
                                                               "not of op=interpolate"),
    (["op=vary", "input=a", "infer=text"], "invalid value 'text' for 'infer': expected one of: class"),
    (["op=vary", "input=a", "infer=class", "class=1"], "infer=class and class= both given: the model infers the "
                                                       "class or is told it; drop one"),
])
def test_bad_settings_fail_before_the_model_loads(capsys, tmp_path, settings, message):
    code, _, err = _edit(capsys, tmp_path / "nowhere", *settings)
    assert code == 2 and message in _one_line(err)


def test_errors_that_need_the_model(capsys, image_export, picture, tmp_path):
    code, _, err = _edit(capsys, image_export, "op=vary", f"input={tmp_path / 'gone.png'}")
    assert code == 2 and f"input={tmp_path / 'gone.png'}: no such file" in _one_line(err)
    code, _, err = _edit(capsys, image_export, "op=inpaint", f"input={picture[0]}", "mask=middle")
    assert code == 2 and ("mask=middle: no such file, and not a region of the image modality (its regions: "
                          "box:<lo>-<hi>,..., top, bottom, left, right, center)") in _one_line(err)
    code, _, err = _edit(capsys, image_export, "op=inpaint", f"input={picture[0]}", "mask=box:0.5-1")
    assert code == 2 and "region 'box:0.5-1' has 1 range(s)" in _one_line(err)
    np.save(tmp_path / "small.npy", np.ones((16, 16), np.float32))
    code, _, err = _edit(capsys, image_export, "op=inpaint", f"input={picture[0]}", f"mask={tmp_path / 'small.npy'}")
    assert code == 2 and "mask shape mismatch: " in _one_line(err) and "expected [1 or 3, 32, 32]" in err
    (tmp_path / "notes.txt").write_text("hello")
    code, _, err = _edit(capsys, image_export, "op=vary", f"input={tmp_path / 'notes.txt'}")
    assert code == 2 and "notes.txt: cannot load as a sample of the image modality: unknown file type '.txt'; " \
        "expected a picture (.png, .jpg" in _one_line(err)
    code, _, err = _edit(capsys, image_export, "op=inpaint", f"input={picture[0]}", "mask=top", "method=learned")
    assert code == 2 and "invalid value 'learned' for 'method': expected one of: training_free, trained" in \
        _one_line(err)
    code, _, err = _edit(capsys, image_export, "op=inpaint", f"input={picture[0]}", "mask=top", "mask_rule=most")
    assert code == 2 and "invalid value 'most' for 'mask_rule': expected one of: any, all, soft" in _one_line(err)
    code, _, err = _edit(capsys, image_export, "op=inpaint", f"input={picture[0]}", "mask=top", "method=trained")
    assert code == 2 and "method='trained' needs a model trained with an inpainting conditioner" in _one_line(err)
    code, _, err = _edit(capsys, image_export, "op=vary", f"input={picture[0]}", "eta=0.3")
    assert code == 2 and ("unknown setting 'eta=0.3': sampler 'dpmpp_2m' has no option 'eta' (its options: spacing); "
                          "the settings of mmldm edit are op, input,") in _one_line(err)
    code, _, err = _edit(capsys, image_export, "op=vary", f"input={picture[0]}", "text=a star")
    assert code == 2 and "'text=a star' given, but the model has no text conditioner" in _one_line(err)
    code, _, err = _edit(capsys, image_export, "op=vary", f"input={picture[0]}", "class=5")
    assert code == 2 and "invalid value '5' for 'class': expected class indices in 0..2" in _one_line(err)
    code, _, err = _edit(capsys, tmp_path, "op=vary", f"input={picture[0]}")
    assert code == 2 and f"{tmp_path} is not an exported model folder (no config.yaml)" in _one_line(err)


def test_an_export_without_a_denoiser(capsys, picture, tmp_path, one_thread):
    export = _export("image", tmp_path / "phase1", with_denoiser=False)
    code, _, err = _edit(capsys, export, "op=vary", f"input={picture[0]}")
    assert code == 2 and (f"{export} holds an autoencoder only (no denoiser.safetensors): editing needs a trained "
                          "diffusion model") in _one_line(err)


def test_voxel_shape_completion_keeps_the_given_half(capsys, voxel, tmp_path, one_thread):
    export = _export("voxel", tmp_path / "voxel")
    x = voxel.dataset("val")[0]["x"]
    npz = voxel.save(x[None], tmp_path / "given", prefix="shape")[0]
    code, _, err = _edit(capsys, export, "op=inpaint", f"input={npz}", "mask=x+", "n=1", f"out={tmp_path / 'out'}")
    assert code == 0, err
    result = np.load(tmp_path / "out" / "inpaint_000.npz")["grid"]
    assert np.array_equal(result[:8], x[0, :8].numpy())  # x < 0 kept exactly
    assert np.load(tmp_path / "out" / "masked_000.npz")["grid"][8:].max() == 0  # the region blanked: empty


def test_audio_gap_filling(capsys, audio, tmp_path, one_thread):
    import soundfile as sf

    export = _export("audio", tmp_path / "audio")
    sf.write(tmp_path / "clip.wav", audio.waveforms("val").waves[0].numpy(), audio.sample_rate)
    code, out, err = _edit(capsys, export, "op=inpaint", f"input={tmp_path / 'clip.wav'}", "mask=gap:0.3-0.6",
                           "n=1", f"out={tmp_path / 'out'}")
    assert code == 0, err
    assert {"inpaint_0000.wav", "masked_0000.wav", "input_0000.wav", "inpaint_grid.png"} <= \
        {p.name for p in (tmp_path / "out").iterdir()}
    code, _, err = _edit(capsys, export, "op=inpaint", f"input={tmp_path / 'clip.wav'}", "mask=gap:3-4")
    assert code == 2 and "region 'gap:3-4' holds no frame" in _one_line(err)


def test_help_explains_every_setting():
    from mmldm.edit_cli import HELP, SETTINGS

    from .conftest import run_cli

    out = run_cli("edit", "--help")
    assert out.returncode == 0 and "usage: mmldm edit" in out.stdout
    for key in SETTINGS:
        assert f"  {key}=" in HELP, key
    for region in ("box:<lo>-<hi>", "top, bottom, left, right", "x-, x+, y-, y+, z-, z+", "gap:<start_s>-<end_s>"):
        assert region in out.stdout
    main = run_cli("--help")
    assert "  edit       inpaint, vary or interpolate" in main.stdout
