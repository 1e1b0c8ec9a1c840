"""xich.datasets.open_dataset on tiny generated data: image folders, tarballs, CIFAR python batches."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xich.engine.datasets import open_dataset
from xich.errors import XichError

# class -> solid RGB colour; PNG is lossless, so every pixel of a tile must read back exactly
COLOURS = {"dog": (0, 0, 255), "cat": (255, 0, 0), "bird": (0, 200, 30)}
PER_CLASS = 3


def _solid(colour: tuple[int, int, int], size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def make_image_folder(root: Path, splits: tuple[str, ...] = ("test", "train"), per_class: int = PER_CLASS) -> Path:
    """root/<split>/<class>/<NNNN>.png, each image a solid colour of its class."""
    for split in splits:
        for cls, colour in COLOURS.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(1, per_class + 1):
                _solid(colour).save(d / f"{i:04d}.png")
    return root


def make_tarball(src: Path, dest: Path, top: str | None, splits: tuple[str, ...] = ("test", "train")) -> Path:
    """A .tar.gz of src/<split>/..., under one top folder (``top``) or at the archive root."""
    with tarfile.open(dest, "w:gz") as tar:
        for split in splits:
            tar.add(src / split, arcname=f"{top}/{split}" if top else split)
    return dest


EXPECTED_IDS = {cls: [f"{cls}/{i:04d}.png" for i in range(1, PER_CLASS + 1)] for cls in COLOURS}


def _load_all(split, tile: int = 32) -> tuple[list[str], torch.Tensor]:
    ids = [i for cls in sorted(split.images) for i in split.images[cls]]
    return ids, split.load(ids, tile)


# --- image folder -------------------------------------------------------------------------------

def test_folder_ids_classes_and_pixels(tmp_path):
    root = make_image_folder(tmp_path / "data")
    ds = open_dataset(str(root), "test", "train")
    assert ds.classes == ["bird", "cat", "dog"]  # sorted, ImageFolder's order
    assert set(ds.splits) == {"test", "train"}
    test = ds.splits["test"]
    assert test.images == EXPECTED_IDS
    ids, x = _load_all(test)
    assert x.dtype == torch.uint8 and x.shape == (9, 3, 32, 32)
    for n, image_id in enumerate(ids):
        colour = COLOURS[image_id.split("/")[0]]
        assert torch.equal(x[n], torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 32)), image_id


def test_folder_resizes_to_tile_size(tmp_path):
    root = make_image_folder(tmp_path / "data", splits=("test",))
    split = open_dataset(str(root), "test", None).splits["test"]
    for tile in (16, 48):
        x = split.load(["cat/0001.png", "bird/0002.png"], tile)
        assert x.shape == (2, 3, tile, tile) and x.dtype == torch.uint8
        # bilinear resizing of a solid colour keeps the colour exactly
        assert x[0, :, 0, 0].tolist() == [255, 0, 0] and bool((x[0] == x[0, :, :1, :1]).all())
        assert x[1, :, tile - 1, tile - 1].tolist() == [0, 200, 30] and bool((x[1] == x[1, :, :1, :1]).all())


def test_folder_image_of_other_size_and_mode_is_resized_rgb(tmp_path):
    root = make_image_folder(tmp_path / "data", splits=("test",))
    Image.new("L", (20, 40), 77).save(root / "test" / "cat" / "0009.png")  # greyscale, not square
    Image.new("RGB", (32, 32), (10, 120, 240)).save(root / "test" / "dog" / "0009.jpg", quality=95)
    split = open_dataset(str(root), "test", None).splits["test"]
    assert split.images["cat"][-1] == "cat/0009.png" and split.images["dog"][-1] == "dog/0009.jpg"
    x = split.load(["cat/0009.png", "dog/0009.jpg"], 32)
    assert x.shape == (2, 3, 32, 32)
    assert bool((x[0] == 77).all())  # grey level copied to the three channels
    # JPEG is lossy: a solid colour comes back within a few levels
    assert (x[1].float().mean(dim=(1, 2)) - torch.tensor([10.0, 120.0, 240.0])).abs().max() < 4


def test_folder_without_train_split_and_train_split_not_requested(tmp_path):
    root = make_image_folder(tmp_path / "data", splits=("test",))
    assert set(open_dataset(str(root), "test", "train").splits) == {"test"}
    root2 = make_image_folder(tmp_path / "data2")
    assert set(open_dataset(str(root2), "test", None).splits) == {"test"}


# --- tarballs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("top", [None, "cifar-mini"])
def test_tarball_matches_folder(tmp_path, top):
    root = make_image_folder(tmp_path / "data")
    archive = make_tarball(root, tmp_path / "data.tar.gz", top)
    from_folder = open_dataset(str(root), "test", "train")
    from_tar = open_dataset(str(archive), "test", "train")
    assert from_tar.classes == from_folder.classes == ["bird", "cat", "dog"]
    assert set(from_tar.splits) == {"test", "train"}
    for name in ("test", "train"):
        assert from_tar.splits[name].images == from_folder.splits[name].images == EXPECTED_IDS
        ids_f, x_f = _load_all(from_folder.splits[name])
        ids_t, x_t = _load_all(from_tar.splits[name])
        assert ids_f == ids_t and torch.equal(x_f, x_t)
    # members named "./test/..." (tar czf x.tar.gz -C root .) read the same
    dot = tmp_path / "dot.tar.gz"
    with tarfile.open(dot, "w:gz") as tar:
        tar.add(root / "test", arcname="./test")
    assert open_dataset(str(dot), "test", None).splits["test"].images == EXPECTED_IDS


def test_folder_of_split_tarballs(tmp_path):
    root = make_image_folder(tmp_path / "src")
    data = tmp_path / "data"
    data.mkdir()
    make_tarball(root, data / "test.tar.gz", None, splits=("test",))
    make_tarball(root, data / "train.tar.gz", None, splits=("train",))
    ds = open_dataset(str(data), "test", "train")
    assert ds.classes == ["bird", "cat", "dog"]
    assert set(ds.splits) == {"test", "train"}
    assert ds.splits["train"].images == EXPECTED_IDS
    _, x_tar = _load_all(ds.splits["test"])
    _, x_dir = _load_all(open_dataset(str(root), "test", None).splits["test"])
    assert torch.equal(x_tar, x_dir)


def test_split_tarball_without_its_split_folder_names_archive(tmp_path):
    root = make_image_folder(tmp_path / "src", splits=("test",))
    data = tmp_path / "data"
    data.mkdir()
    # train.tar.gz that holds test/<class>/... instead of train/<class>/...
    make_tarball(root, data / "train.tar.gz", None, splits=("test",))
    make_tarball(root, data / "test.tar.gz", None, splits=("test",))
    ds = open_dataset(str(data), "test", "train")  # lazy: the train archive is not read yet
    with pytest.raises(XichError, match=r"train\.tar\.gz holds no train/<class>/<image> files"):
        ds.splits["train"].images


# --- CIFAR-10 python batches ------------------------------------------------------------------

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _cifar_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[int]]:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 3, size=n)]  # only the first three classes occur
    return data, labels


def make_cifar10(root: Path, with_train: bool = True) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_NAMES, "num_vis": 3072}, f)
    data, labels = {}, {}
    files = {"test": ["test_batch"]}
    if with_train:
        files["train"] = [f"data_batch_{i}" for i in range(1, 6)]
    for split, names in files.items():
        chunks, labs = [], []
        for name in names:
            d, lab = _cifar_batch(rng, 4)
            with open(folder / name, "wb") as f:
                pickle.dump({"batch_label": name, "data": d, "labels": lab}, f)
            chunks.append(d)
            labs += lab
        data[split], labels[split] = np.concatenate(chunks), labs
    return data, labels


@pytest.mark.parametrize("point_at_batches_folder", [False, True])
def test_cifar10_python_batches(tmp_path, point_at_batches_folder):
    data, labels = make_cifar10(tmp_path / "c10")
    where = tmp_path / "c10" / "cifar-10-batches-py" if point_at_batches_folder else tmp_path / "c10"
    ds = open_dataset(f"cifar10:{where}", "test", "train")
    assert set(ds.splits) == {"test", "train"}
    test, train = ds.splits["test"], ds.splits["train"]
    present = sorted({CIFAR_NAMES[c] for c in labels["test"]})
    assert ds.classes == present
    for split, s in (("test", test), ("train", train)):
        assert sum(len(v) for v in s.images.values()) == len(labels[split])
        for cls, ids in s.images.items():
            assert ids and all(i.startswith("index:") for i in ids)
            assert all(labels[split][int(i.removeprefix("index:"))] == CIFAR_NAMES.index(cls) for i in ids)
    # train batches 1..5 are concatenated: index 19 is the last image of data_batch_5
    assert len(data["train"]) == 20
    x = train.load(["index:0", "index:19"], 32)
    expected = torch.from_numpy(data["train"][[0, 19]].reshape(2, 3, 32, 32))  # CIFAR rows are R, G, B planes
    assert x.dtype == torch.uint8 and torch.equal(x, expected)
    # the HWC view is what read() returns
    assert np.array_equal(test.read("index:2"), data["test"][2].reshape(3, 32, 32).transpose(1, 2, 0))
    # resizing from the strided HWC view works and gives the requested size
    assert test.load(["index:1"], 16).shape == (1, 3, 16, 16)


def test_cifar10_without_train_batches(tmp_path):
    make_cifar10(tmp_path / "c10", with_train=False)
    ds = open_dataset(f"cifar10:{tmp_path / 'c10'}", "test", "train")
    assert set(ds.splits) == {"test"}
    with pytest.raises(XichError, match=r"no evaluation split 'train' \(found: test\)"):
        open_dataset(f"cifar10:{tmp_path / 'c10'}", "train", None)


def test_cifar10_missing_meta_names_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(XichError, match=r"no CIFAR10 python batches") as info:
        open_dataset(f"cifar10:{tmp_path / 'empty'}", "test", None)
    assert f"cifar10:{tmp_path / 'empty'}" in str(info.value)


# --- errors ----------------------------------------------------------------------------------------

def test_missing_path(tmp_path):
    uri = str(tmp_path / "nowhere")
    with pytest.raises(XichError) as info:
        open_dataset(uri, "test", "train")
    assert str(info.value) == f"--data {uri}: no such file or folder"


def test_file_that_is_not_an_archive(tmp_path):
    p = tmp_path / "data.zip"
    p.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(XichError, match="not a folder nor a .tar/.tar.gz archive") as info:
        open_dataset(str(p), "test", None)
    assert str(p) in str(info.value)


def test_corrupt_tarball(tmp_path):
    p = tmp_path / "data.tar.gz"
    p.write_bytes(b"\x1f\x8b\x08\x00garbage that is not gzip data")
    with pytest.raises(XichError, match="cannot read archive") as info:
        open_dataset(str(p), "test", None)
    assert str(p) in str(info.value)


def test_class_folder_without_images_in_train_split(tmp_path):
    root = make_image_folder(tmp_path / "data")
    (root / "train" / "empty").mkdir()
    (root / "train" / "empty" / "notes.txt").write_text("not an image")
    ds = open_dataset(str(root), "test", "train")  # the train index is built on first use
    with pytest.raises(XichError) as info:
        ds.splits["train"].images
    assert f"class folder {root / 'train'}/empty has no images" in str(info.value)


def test_class_folder_without_images_fails_at_open(tmp_path):
    # open_dataset sorts the classes, so the eval split's index is built at open time
    root = make_image_folder(tmp_path / "data", splits=("test",))
    (root / "test" / "zebra").mkdir()
    with pytest.raises(XichError, match=r"class folder .*/test/zebra has no images"):
        open_dataset(str(root), "test", None)


def test_unreadable_image_when_loaded(tmp_path):
    root = make_image_folder(tmp_path / "data", splits=("test",))
    bad = root / "test" / "cat" / "0004.jpg"
    bad.write_bytes(b"\xff\xd8\xff this is not a JPEG")
    ds = open_dataset(str(root), "test", None)
    split = ds.splits["test"]
    assert "cat/0004.jpg" in split.images["cat"]
    assert split.load(["cat/0001.png"], 32).shape == (1, 3, 32, 32)  # good images still load
    with pytest.raises(XichError) as info:
        split.load(["cat/0001.png", "cat/0004.jpg"], 32)
    assert f"unreadable image {bad}" in str(info.value)


def test_unreadable_image_in_tarball_names_member(tmp_path):
    root = make_image_folder(tmp_path / "data", splits=("test",))
    (root / "test" / "dog" / "0004.png").write_bytes(b"garbage")
    archive = make_tarball(root, tmp_path / "d.tar.gz", "top", splits=("test",))
    split = open_dataset(str(archive), "test", None).splits["test"]
    with pytest.raises(XichError) as info:
        split.load(["dog/0004.png"], 32)
    assert f"unreadable image {archive}!top/test/dog/0004.png" in str(info.value)


def test_unknown_eval_split(tmp_path):
    root = make_image_folder(tmp_path / "data")
    with pytest.raises(XichError) as info:
        open_dataset(str(root), "val", "train")
    msg = str(info.value)
    assert msg.startswith(f"--data {root}: no evaluation split 'val'")
    assert "(found: test, train)" in msg and "--eval-split" in msg


def test_tarball_with_nested_class_subfolders_matches_folder(tmp_path):
    root = tmp_path / "data"
    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (root / "test" / cls / "sub").mkdir(parents=True)
        _solid(colour).save(root / "test" / cls / "sub" / "0001.png")
    expected = {"cat": ["cat/sub/0001.png"], "dog": ["dog/sub/0001.png"]}
    assert open_dataset(str(root), "test", None).splits["test"].images == expected
    archive = make_tarball(root, tmp_path / "data.tar.gz", None, splits=("test",))
    assert open_dataset(str(archive), "test", None).splits["test"].images == expected


def test_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", splits=("test",))
    huge = root / "test" / "cat" / "0004.png"
    Image.new("RGB", (100, 100), (255, 0, 0)).save(huge)
    # PIL refuses images over twice MAX_IMAGE_PIXELS (default ~179 Mpx): lowered, a 100x100 PNG is such a bomb
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    split = open_dataset(str(root), "test", None).splits["test"]
    assert split.load(["cat/0001.png"], 32).shape == (1, 3, 32, 32)  # 32x32 = 1,024 px: under the limit
    with pytest.raises(XichError) as info:
        split.load(["cat/0001.png", "cat/0004.png"], 32)
    msg = str(info.value)
    assert msg.startswith(f"image {huge} is too large to decode safely (Image size (10000 pixels) exceeds limit")
    assert msg.endswith("shrink it or remove the file") and "\n" not in msg


# --- CIFAR batches are unpickled without running code -------------------------------------------------------

def _malicious_pickle(path: Path, marker: Path) -> None:
    """A pickle (protocol 0, written by hand) that calls os.system("touch MARKER") when plain pickle loads it."""
    path.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")


@pytest.mark.parametrize("member", ["batches.meta", "test_batch"])
def test_cifar_batch_that_would_run_code_is_refused(tmp_path, member):
    make_cifar10(tmp_path / "c10", with_train=False)
    marker = tmp_path / "pwned"
    bad = tmp_path / "c10" / "cifar-10-batches-py" / member
    _malicious_pickle(bad, marker)
    with pytest.raises(XichError) as info:
        open_dataset(f"cifar10:{tmp_path / 'c10'}", "test", None)
    msg = str(info.value)
    assert msg.startswith(f"CIFAR batch {bad}: XICH refuses to unpickle os.system") and "\n" not in msg
    assert not marker.exists()  # the command did not run
    with open(bad, "rb") as f:  # the file is truly malicious: plain pickle runs the command
        pickle.load(f)
    assert marker.exists()


def test_cifar_batch_with_another_global_is_refused(tmp_path):
    make_cifar10(tmp_path / "c10", with_train=False)
    bad = tmp_path / "c10" / "cifar-10-batches-py" / "test_batch"
    with open(bad, "wb") as f:  # harmless, but a numpy scalar is not in a real batch: only what is, is admitted
        pickle.dump({"data": np.zeros((1, 3072), np.uint8), "labels": [0], "batch_label": np.float64(1.0)}, f)
    with pytest.raises(XichError, match=r"test_batch: XICH refuses to unpickle numpy\._core\.multiarray\.scalar"):
        open_dataset(f"cifar10:{tmp_path / 'c10'}", "test", None)


def test_cifar_batch_that_is_not_a_dict_or_lacks_its_entries(tmp_path):
    make_cifar10(tmp_path / "c10", with_train=False)
    folder = tmp_path / "c10" / "cifar-10-batches-py"
    with open(folder / "test_batch", "wb") as f:
        pickle.dump([np.zeros((1, 3072), np.uint8)], f)
    with pytest.raises(XichError, match=r"test_batch: it holds a list, not a dict"):
        open_dataset(f"cifar10:{tmp_path / 'c10'}", "test", None)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((1, 3072), np.uint8)}, f)
    with pytest.raises(XichError, match=r"test_batch: no 'labels' entry"):
        open_dataset(f"cifar10:{tmp_path / 'c10'}", "test", None)


def test_cifar_batch_from_numpy_arrays_and_lists_loads(tmp_path):
    """What the restricted unpickler admits is enough for a batch written by numpy and pickle (protocols 3-5)."""
    folder = tmp_path / "c10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, size=(6, 3072), dtype=np.uint8)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": ["cat", "dog"], b"num_vis": 3072}, f, protocol=3)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"batch_label": b"testing batch 1 of 1", b"data": data, b"labels": [0, 1, 0, 1, 1, 0],
                     b"filenames": [f"img_{i}.png".encode() for i in range(6)]}, f, protocol=4)
    ds = open_dataset(f"cifar10:{tmp_path / 'c10'}", "test", None)
    assert ds.classes == ["cat", "dog"]
    assert ds.splits["test"].images == {"cat": ["index:0", "index:2", "index:5"], "dog": ["index:1", "index:3", "index:4"]}
    assert np.array_equal(ds.splits["test"].read("index:4"), data[4].reshape(3, 32, 32).transpose(1, 2, 0))


def _tree(root: Path, images: dict[str, bytes]) -> Path:
    for rel, data in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_dataset_identity_is_its_images_content_wherever_they_are(tmp_path):
    from xich.engine.datasets import content_fingerprint

    images = {f"test/{c}/{k}.png": _png(10 * n + k) for n, c in enumerate(("cat", "dog")) for k in range(3)}
    a = _tree(tmp_path / "a", images)
    b = _tree(tmp_path / "elsewhere" / "b", images)
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz") as tar:
        tar.add(a / "test", arcname="test")

    def fp(uri: str) -> tuple[str, int]:
        return content_fingerprint([open_dataset(uri, "test", None).splits["test"]])

    assert fp(str(a)) == fp(str(b)) == fp(str(tmp_path / "c.tar.gz"))
    assert fp(str(a))[1] == 6
    (b / "test/dog/2.png").write_bytes(_png(99))
    assert fp(str(b))[0] != fp(str(a))[0]


def test_folder_hashes_are_cached_by_size_and_mtime(tmp_path):
    """A second fingerprint of an unchanged folder reads no image: a file rewritten behind the cache's back
    (same size, same mtime) keeps its cached hash; touching it makes the cache read it again."""
    import os

    from xich.engine.datasets import content_fingerprint

    root = _tree(tmp_path / "d", {"test/cat/0.bin.png": b"A" * 64, "test/cat/1.png": b"B" * 64})
    cache = tmp_path / "cache"
    split = lambda: open_dataset(str(root), "test", None).splits["test"]  # noqa: E731
    first = content_fingerprint([split()], cache)
    path = root / "test/cat/1.png"
    st = path.stat()
    path.write_bytes(b"C" * 64)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert content_fingerprint([split()], cache) == first  # served from the cache: the file was not read
    assert content_fingerprint([split()]) != first  # without the cache the new bytes count
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert content_fingerprint([split()], cache) != first


@pytest.mark.parametrize("options", [
    {"quality": 90}, {"quality": 75, "subsampling": 0}, {"quality": 95, "subsampling": 1},
    {"quality": 80, "progressive": True}, {"quality": 70, "optimize": True}, {"mode": "L"}, {"mode": "CMYK"},
    {"size": (33, 17)}])
def test_jpegs_decode_to_the_same_pixels_as_pil(options):
    """datasets._decode sends RGB and greyscale JPEGs to torchvision's decode_jpeg (faster): every pixel must be
    PIL's, or every audit of a JPEG dataset would change its numbers."""
    from xich.engine.datasets import _decode

    options = dict(options)
    w, h = options.pop("size", (224, 224))
    rng = np.random.default_rng(3)
    smooth = np.linspace(0, 255, w * h * 3).reshape(h, w, 3)
    pixels = np.clip(smooth + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels).convert(options.pop("mode", "RGB"))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **options)
    with Image.open(io.BytesIO(buf.getvalue())) as ref:
        expected = np.asarray(ref.convert("RGB"))
    got = _decode(buf.getvalue(), "test.jpg")
    assert got.dtype == np.uint8 and got.shape == (h, w, 3) and got.flags.c_contiguous
    assert np.array_equal(got, expected)


def test_a_jpeg_over_the_size_cap_is_refused_from_its_header_and_a_cmyk_one_read_by_pil():
    from xich.engine.datasets import ImageTooLarge, _decode, _jpeg_size

    buf = io.BytesIO()
    Image.new("RGB", (300, 40), (200, 10, 10)).save(buf, format="JPEG", progressive=True)
    assert _jpeg_size(buf.getvalue()) == (300, 40)
    with pytest.raises(ImageTooLarge, match="300×40 pixels, over the cap of 64"):
        _decode(buf.getvalue(), "wide.jpg", max_side=64)
    cmyk = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk, format="JPEG")
    assert _jpeg_size(cmyk.getvalue()) is None  # four components: PIL converts it
    assert _decode(cmyk.getvalue(), "cmyk.jpg").shape == (8, 8, 3)
    assert _jpeg_size(b"\xff\xd8\xff this is not a JPEG") is None
