"""The training split is streamed through the model a chunk at a time (datasets.ImageStream): the same images,
in the same order, the same placement as loading it whole, and never more than one chunk (plus the one decoded
ahead) in memory. The peak-RSS benchmark of this is bench/scale.py; here, what can be counted."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from PIL import Image

from xich.engine.audit import STAGES, audit_class, open_audit, run_audit
from xich.engine.datasets import ImageStream, open_dataset
from xich.errors import XichError

from toy_nets import brightness_config, write_grey_tiles

EVAL_LEVELS = [20, 30, 110, 120, 220, 230]  # dark, middle, bright pairs: k-means with P = 3 separates them
# nearest cluster centre (25, 115, 225) by hand: 3 dark, 3 middle, 4 bright
TRAIN_LEVELS = [10, 25, 40, 100, 115, 130, 200, 215, 240, 250]


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    return write_grey_tiles(tmp_path_factory.mktemp("grey"), {"test": EVAL_LEVELS, "train": TRAIN_LEVELS})


def test_a_stream_yields_every_image_in_order_in_chunks_of_at_most_chunk(grey):
    split = open_dataset(str(grey), "test", "train").splits["train"]
    ids = split.images["tile"]
    stream = split.stream(ids, 32, chunk=3)
    chunks = list(stream)
    assert [len(k) for k, _ in chunks] == [3, 3, 3, 1]
    assert all(x.shape == (len(k), 3, 32, 32) and x.dtype == torch.uint8 for k, x in chunks)
    assert stream.kept == ids
    torch.testing.assert_close(torch.cat([x for _, x in chunks]), split.load(ids, 32), rtol=0, atol=0)
    assert [int(x[i, 0, 0, 0]) for _, x in chunks for i in range(len(x))] == TRAIN_LEVELS


def test_a_stream_leaves_out_images_over_the_size_cap_and_refuses_when_none_is_left(tmp_path):
    (tmp_path / "test" / "a").mkdir(parents=True)
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "test" / "a" / "small.png")
    Image.new("RGB", (100, 100), (9, 9, 9)).save(tmp_path / "test" / "a" / "wide.png")  # over 2 × 32 a side
    split = open_dataset(str(tmp_path), "test", None, max_side_factor=2).splits["test"]
    stream = split.stream(["a/small.png", "a/wide.png", "a/small.png"], 32, chunk=2)
    assert [k for k, _ in stream] == [["a/small.png"], ["a/small.png"]]
    assert "a/wide.png" in split.skipped
    with pytest.raises(XichError, match="every one of 1 image"):
        list(split.stream(["a/wide.png"], 32, chunk=2))


def test_the_streamed_training_placement_is_the_hand_counted_one_and_that_of_the_whole_split(grey, one_torch_thread):
    opened = open_audit(brightness_config(grey, batch_size=3))  # 10 training images: 4 chunks
    images = opened.load("tile")
    assert isinstance(images.train_images, ImageStream) and images.train_images.chunk == 3
    streamed = audit_class(opened, images)
    whole = audit_class(opened, dataclasses.replace(
        images, train_images=opened.train_split.load(opened.train_split.images["tile"], 32)))
    by_level = {c.id: sorted(EVAL_LEVELS[int(i.split("/")[1][:2])] for i in c.members) for c in streamed.clusters}
    counts = {tuple(by_level[c.id]): c.train_count for c in streamed.clusters}
    assert counts == {(20, 30): 3, (110, 120): 3, (220, 230): 4}
    assert [c.train_count for c in whole.clusters] == [c.train_count for c in streamed.clusters]
    assert repr(dataclasses.asdict(streamed)) == repr(dataclasses.asdict(whole))  # every number, NaN included


def test_the_document_says_where_the_time_went_stage_by_stage(grey, one_torch_thread):
    began = time.perf_counter()
    result = run_audit(brightness_config(grey, batch_size=3))
    wall = time.perf_counter() - began
    # every stage the audit ran (no control: --no-control; no null: the brightness net's weights are fixed), in
    # seconds summed over its classes
    assert list(result.timings) == [s for s in STAGES if s not in ("control_s", "null_s")]
    assert all(0 <= v < wall for v in result.timings.values()) and result.timings["cam_s"] > 0
    assert sum(v for k, v in result.timings.items() if k != "decode_s") < wall  # the others run one after another
    assert result.to_dict()["timings"] == result.timings
