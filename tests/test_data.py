"""Reference images, Spurious ImageNet selection, prior-image cache, the DreamBooth batch layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from spurgen.data import spurious_imagenet
from spurgen.data.dataset import DreamBoothDataset, collate, load_training_images
from spurgen.data.images import list_images, load_rgb
from spurgen.data.prior import (
    PriorSampling,
    cache_fields,
    cache_key,
    ensure_class_images,
    training_placement,
)
from spurgen.data.references import reference_folder, select_references
from spurgen.errors import SpurgenError

from .conftest import write_images
from .helpers import TINY


def test_modes_are_converted_to_rgb(tmp_path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "a.png")  # fully transparent -> white
    Image.new("L", (8, 8), 128).save(tmp_path / "b.png")
    Image.new("P", (8, 8), 3).save(tmp_path / "c.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "d.webp")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(tmp_path / "e.jpg")
    ims = {p.name: load_rgb(p) for p in list_images(tmp_path)}
    assert set(ims) == {"a.png", "b.png", "c.png", "d.webp", "e.jpg"}
    assert all(im.mode == "RGB" for im in ims.values())
    assert ims["a.png"].getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    im.save(tmp_path / "r.jpg", exif=exif)
    assert load_rgb(tmp_path / "r.jpg").size == (10, 20)


def test_bad_folders_and_files(tmp_path):
    with pytest.raises(SpurgenError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpurgenError, match="no images"):
        list_images(tmp_path / "empty")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(SpurgenError, match="cannot read image"):
        load_rgb(tmp_path / "bad.png")


def test_an_image_too_large_to_decode_is_one_clear_error(tmp_path, monkeypatch):
    """PIL's decompression-bomb guard (an error past 2 x MAX_IMAGE_PIXELS) is a SpurgenError naming the file,
    and the folder still lists it as an image (it is one), so evaluation says what is wrong with it."""
    from PIL import Image

    from spurgen.eval.imagesets import _readable

    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels > 2 x 100
    assert _readable(tmp_path / "big.png")
    with pytest.raises(SpurgenError, match=r"cannot read image .*big.png: .*downscale it"):
        load_rgb(tmp_path / "big.png")


def test_reference_selection_is_deterministic_and_checked(tmp_path):
    write_images(tmp_path, 8)
    a = select_references(tmp_path, 3, seed=1)
    assert a == select_references(tmp_path, 3, seed=1)
    assert any(select_references(tmp_path, 3, seed=s) != a for s in range(2, 6))
    with pytest.raises(SpurgenError, match="num_references=9"):
        select_references(tmp_path, 9, seed=0)
    named = select_references(tmp_path, 2, 0, names=["img_005.png", "img_001.png"])
    assert [p.name for p in named] == ["img_005.png", "img_001.png"]


def make_spurious_imagenet(root):
    for name, n in [
        ("n01833805_hummingbird_94_feeder_1", 3),
        ("n01833805_hummingbird_94_flower_4", 2),
        ("n01882714_koala_105_euc_0", 2),
    ]:
        write_images(root / name, n)
    (root / "timestamp.txt").write_text("2\n")
    return root


def test_spurious_imagenet_selection(tmp_path):
    root = make_spurious_imagenet(tmp_path / "images")
    assert spurious_imagenet.select_folder(root, 105, None).name.endswith("_0")
    assert spurious_imagenet.select_folder(root, 94, 4).name.endswith("flower_4")
    with pytest.raises(SpurgenError) as err:
        spurious_imagenet.select_folder(root, 94, None)
    assert "component 1 (3 images" in str(err.value) and "component 4 (2 images" in str(err.value)
    with pytest.raises(SpurgenError, match="no component 7"):
        spurious_imagenet.select_folder(root, 94, 7)
    with pytest.raises(SpurgenError, match="no images of class 1"):
        spurious_imagenet.select_folder(root, 1, None)
    assert spurious_imagenet.dataset_version(root) == "2"
    assert reference_folder(None, str(root), 94, 1).name.endswith("feeder_1")
    with pytest.raises(SpurgenError, match="no reference images") as err:
        reference_folder(None, None, 94, None)
    assert "spurgen pick <folder of photos> class=94" in str(err.value)  # says how to get references


def test_small_images_are_upscaled_with_a_warning(tmp_path):
    paths = write_images(tmp_path, 1, size=16)
    with pytest.warns(UserWarning, match="upscaled"):
        x = load_training_images(paths, 32)
    assert x.shape == (1, 3, 32, 32) and 0 <= x.min() and x.max() <= 1


def test_batch_holds_instance_half_first(tmp_path):
    cls = write_images(tmp_path / "cls", 3, size=32)
    ds = DreamBoothDataset(
        torch.zeros(2, 3, 32, 32), torch.zeros(5, dtype=torch.long), cls, torch.ones(5, dtype=torch.long), 32
    )
    assert len(ds) == 3
    batch = collate([ds[0], ds[1]])
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["n_instance"] == 2
    assert torch.all(batch["pixel_values"][:2] == -1)  # instance images (zeros in [0,1] -> -1)
    assert batch["input_ids"][:2].sum() == 0 and batch["input_ids"][2:].sum() == 10
    assert batch["pair_index"].tolist() == [0, 1]


def test_prior_images_are_generated_once_and_cached(tiny_parts, tmp_path, monkeypatch):
    fast = PriorSampling(steps=2, guidance=1.0)
    paths = ensure_class_images(tiny_parts, "a photo of a flower", 32, 3, sampling=fast)
    assert len(paths) == 3 and all(Image.open(p).size == (32, 32) for p in paths)
    first = [np.asarray(Image.open(p)) for p in paths]

    import spurgen.data.prior as prior

    def boom(*a, **k):
        raise AssertionError("cache miss: the pipeline was called again")

    monkeypatch.setattr(prior, "sample", boom)
    again = ensure_class_images(tiny_parts, "a photo of a flower", 32, 3, sampling=fast)
    assert again == paths
    monkeypatch.undo()
    # deterministic: regenerating in a new folder gives the same pixels
    other = ensure_class_images(tiny_parts, "a photo of a flower", 32, 3, tmp_path / "x", fast)
    assert all(np.array_equal(a, np.asarray(Image.open(b))) for a, b in zip(first, other, strict=True))
    # a partly filled folder is completed, not regenerated
    (tmp_path / "x" / "class_00001.png").unlink()
    assert len(ensure_class_images(tiny_parts, "a photo of a flower", 32, 3, tmp_path / "x", fast)) == 3


def _spy(monkeypatch) -> list[dict]:
    """Record what each sampling call of the prior generation sees (and still sample)."""
    import spurgen.data.prior as prior

    calls: list[dict] = []
    real = prior.sample

    def spy(pipe, prompts, seeds, *args, **kwargs):
        calls.append({"seeds": list(seeds), "unet": pipe.unet.dtype, "text": pipe.text_encoder.dtype})
        calls[-1]["device"] = pipe.unet.device
        return real(pipe, prompts, seeds, *args, **kwargs)

    monkeypatch.setattr(prior, "sample", spy)
    return calls


def test_prior_images_sample_in_the_requested_dtype_and_leave_the_parts_as_they_were(tiny_parts, monkeypatch):
    calls = _spy(monkeypatch)
    before = {k: v.clone() for k, v in tiny_parts.unet.state_dict().items()}
    text_before = {k: v.clone() for k, v in tiny_parts.text_encoder.state_dict().items()}
    sampling = PriorSampling(steps=2, guidance=1.0, batch_size=2, device="cpu", dtype=torch.bfloat16)
    paths = ensure_class_images(tiny_parts, "a photo of a flower", 32, 3, sampling=sampling)
    assert len(paths) == 3 and [c["seeds"] for c in calls] == [[0, 1], [2]]  # batched
    assert all(c["unet"] == c["text"] == torch.bfloat16 and c["device"].type == "cpu" for c in calls)
    for module, saved in ((tiny_parts.unet, before), (tiny_parts.text_encoder, text_before)):
        assert all(p.dtype == torch.float32 for p in module.parameters())
        now = module.state_dict()
        assert all(torch.equal(now[k], v) for k, v in saved.items())  # bit for bit
    assert tiny_parts.vae.dtype == torch.float32


def test_prior_cache_key_holds_the_settings_but_not_the_count(tiny_parts, tiny_parts_factory):
    from diffusers import EulerDiscreteScheduler

    def key(parts=tiny_parts, **kw):
        return cache_key(cache_fields(parts, "a photo of a flower", 32, PriorSampling(**kw)))

    base = key()
    changed = [
        key(steps=3),
        key(guidance=2.0),
        key(dtype=torch.bfloat16),
        key(negative_prompt="bird"),
        cache_key(cache_fields(tiny_parts, "a photo of a leaf", 32, PriorSampling())),
        key(parts=tiny_parts_factory(init_seed=1)),  # other weights: another tiny-random id
    ]
    assert base not in changed and len(set(changed)) == len(changed)
    assert key(batch_size=16, device="cpu") == base  # how, not what
    sampler = EulerDiscreteScheduler.from_config(tiny_parts.sample_scheduler.config)
    other = type(tiny_parts)(**{**tiny_parts.__dict__, "sample_scheduler": sampler})
    assert key(parts=other) != base


def test_prior_cache_key_of_a_local_folder_follows_its_files(tiny_parts, tmp_path):
    from spurgen.data.prior import model_fingerprint

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "w.bin").write_bytes(b"1234")
    local = type(tiny_parts)(**{**tiny_parts.__dict__, "model_id": str(tmp_path), "path": str(tmp_path)})
    first = model_fingerprint(local)
    (tmp_path / "unet" / "w.bin").write_bytes(b"12345")
    assert model_fingerprint(local) != first and model_fingerprint(local).startswith(str(tmp_path))


def test_a_larger_count_extends_the_cache(tiny_parts, monkeypatch):
    fast = PriorSampling(steps=3, guidance=1.0, batch_size=4)  # a cache no other test fills
    two = ensure_class_images(tiny_parts, "a photo of a flower", 32, 2, sampling=fast)
    calls = _spy(monkeypatch)
    four = ensure_class_images(tiny_parts, "a photo of a flower", 32, 4, sampling=fast)
    assert [c["seeds"] for c in calls] == [[2, 3]]  # only the missing images
    assert four[:2] == two and len({p.parent for p in four}) == 1
    assert ensure_class_images(tiny_parts, "a photo of a flower", 32, 3, sampling=fast) == four[:3]
    assert [c["seeds"] for c in calls] == [[2, 3]]


def test_training_placement_follows_the_trainer_settings(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_placement("cpu", 1, "bf16-mixed") == (torch.device("cpu"), torch.bfloat16)
    assert training_placement("auto", 1, "32-true") == (torch.device("cpu"), torch.float32)
    assert training_placement("cpu", 1, "16-mixed")[1] == torch.bfloat16  # no float16 sampling on CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert training_placement("gpu", [2, 3], "16-mixed") == (torch.device("cuda", 3), torch.float16)
    assert training_placement("auto", 2, "bf16-true") == (torch.device("cuda", 1), torch.bfloat16)
    assert training_placement("cpu", 1, 32)[0] == torch.device("cpu")


def test_references_follow_reference_seed_not_the_training_seed():
    from hydra import compose, initialize_config_dir

    from spurgen.config import CONF_DIR, register_configs, register_resolvers
    from spurgen.validation import resolve_references

    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        picks = {
            (s, r): resolve_references(compose("config", [*TINY, f"seed={s}", f"data.reference_seed={r}"]))
            for s in (0, 1, 2)
            for r in (0, 1, 2, 3)
        }
    assert all(picks[(s, r)] == picks[(0, r)] for s, r in picks)
    assert len({tuple(v) for v in picks.values()}) > 1
