"""`xich audit` on bad input: one clear message naming the input, exit status 2, no traceback."""

from __future__ import annotations

import json
import sqlite3
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from builders import AUDITED_RUNS
import torch
from PIL import Image

from xich.cli import main

CLASSES = ("cat", "dog")
FAST = ["--model", "cifar:resnet20", "--clusters", "2", "--mosaics-per-pair", "2", "--train-split", "", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_noise_dataset(root: Path, per_class: int = 6) -> Path:
    """root/test/<class>/<NNNN>.png: 32×32 random-noise images, fixed seed."""
    rng = np.random.default_rng(1234)
    for cls in CLASSES:
        d = root / "test" / cls
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(d / f"{i:04d}.png")
    return root


@pytest.fixture
def data(tmp_path) -> Path:
    return make_noise_dataset(tmp_path / "data")


def _squash(text: str) -> str:
    """Text without whitespace: rich wraps long messages at the console width (80 when not a terminal)."""
    return "".join(text.split())


def assert_says(err: str, *fragments: str) -> None:
    for fragment in fragments:
        assert _squash(fragment) in _squash(err), (fragment, err)


def run_failing(capsys, argv: list[str], *names: str) -> str:
    """Run the CLI, expect exit status 2 and one error message naming every one of ``names``."""
    code = main(argv)
    captured = capsys.readouterr()
    both = captured.out + captured.err
    assert code == 2, both
    assert "Traceback" not in both
    assert captured.err.count("error:") == 1, captured.err
    assert_says(captured.err, *names)
    return captured.err


def test_missing_data_path(tmp_path, capsys):
    missing = tmp_path / "no-such-dataset"
    err = run_failing(capsys, ["audit", "--data", str(missing), *FAST], f"--data {missing}")
    assert_says(err, "no such file or folder")


def test_unknown_model_spec(data, capsys):
    argv = ["audit", "--data", str(data), *FAST, "--model", "cifar:resnet99"]  # the last --model wins
    err = run_failing(capsys, argv, "'cifar:resnet99'")
    assert_says(err, "unknown CIFAR model", "cifar:resnet20")


def test_checkpoint_that_does_not_fit(data, tmp_path, capsys):
    import torchvision

    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=2).state_dict(), weights)
    err = run_failing(capsys, ["audit", "--data", str(data), *FAST, "--weights", str(weights)],
                      str(weights), "'conv1.weight'")
    assert_says(err, "does not fit the model")
    # resnet18's conv1 is 7×7 with 64 filters, resnet20's 3×3 with 16
    assert_says(err, "has shape (64, 3, 7, 7), the model expects (16, 3, 3, 3)")


def test_missing_weights_file(data, tmp_path, capsys):
    weights = tmp_path / "absent.th"
    err = run_failing(capsys, ["audit", "--data", str(data), *FAST, "--weights", str(weights)], str(weights))
    assert_says(err, "no such file")


def test_class_folder_without_images(data, capsys):
    (data / "test" / "zebra").mkdir()
    (data / "test" / "zebra" / "labels.csv").write_text("a,b\n")
    err = run_failing(capsys, ["audit", "--data", str(data), *FAST], str(data / "test" / "zebra"))
    assert_says(err, "has no images")


def test_unreadable_image(data, capsys):
    # in the first class, so the error comes before any model work (a later class fails after earlier ones ran)
    bad = data / "test" / "cat" / "0099.jpg"
    bad.write_bytes(np.random.default_rng(5).integers(0, 256, size=500, dtype=np.uint8).tobytes())
    err = run_failing(capsys, ["audit", "--data", str(data), *FAST], str(bad))
    assert_says(err, "unreadable image")


def test_decompression_bomb(data, capsys, monkeypatch):
    huge = data / "test" / "cat" / "0099.png"
    Image.new("RGB", (100, 100), (9, 9, 9)).save(huge)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # PIL refuses over 2x this: 10,000 px here, not 1,024
    err = run_failing(capsys, ["audit", "--data", str(data), *FAST], f"image {huge}")
    assert_says(err, "too large to decode safely", "shrink it or remove the file")

def test_unknown_class(data, capsys):
    err = run_failing(capsys, ["audit", "--data", str(data), *FAST, "--classes", "cat,zebra"], "zebra")
    assert_says(err, "--classes", "available: cat, dog")


@pytest.mark.parametrize("spec", ["imagenett", "0.5,0.5/0.2,0.2", "0.5,0.5,0.5/0.2,0,0.2", "a,b,c/d,e,f"])
def test_bad_normalize(data, capsys, spec):
    err = run_failing(capsys, ["audit", "--data", str(data), *FAST, "--normalize", spec], f"--normalize '{spec}'")
    assert_says(err, "positive stds")


def test_unknown_eval_split(data, capsys):
    err = run_failing(capsys, ["audit", "--data", str(data), *FAST, "--eval-split", "val"], f"--data {data}", "'val'")
    assert_says(err, "found: test")


def test_bad_counts(data, capsys):
    run_failing(capsys, ["audit", "--data", str(data), *FAST, "--clusters", "0"], "--clusters")
    run_failing(capsys, ["audit", "--data", str(data), *FAST, "--tile-size", "4"], "--tile-size")


def test_audit_succeeds_and_writes_json(data, tmp_path, capsys):
    out = tmp_path / "audit.json"
    code = main(["audit", "--data", str(data), *FAST, "--json", str(out), "--seed", "3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "error:" not in captured.err and "Traceback" not in captured.out + captured.err
    assert "XICH audit" in captured.out
    doc = json.loads(out.read_text())
    assert {"run_id", "model", "dataset", "config", "classes", "summary"} <= set(doc)
    assert doc["model"]["spec"] == "cifar:resnet20" and doc["model"]["weights"] is None
    assert doc["dataset"]["uri"] == str(data) and doc["dataset"]["train_split"] is None
    assert doc["config"]["layer"] == "layer3" and doc["config"]["tile_size"] == 32
    assert doc["config"]["clusters"] == 2 and doc["config"]["seed"] == 3
    assert [c["name"] for c in doc["classes"]] == list(CLASSES)
    for cls in doc["classes"]:
        sizes = [cl["eval_size"] for cl in cls["clusters"]]
        assert sum(sizes) == 6  # every image of the class in exactly one cluster
        members = sorted(m for cl in cls["clusters"] for m in cl["members"])
        assert members == [f"{cls['name']}/{i:04d}.png" for i in range(6)]


def test_error_message_is_not_hard_wrapped(tmp_path, capsys):
    missing = tmp_path / ("a-rather-long-folder-name-for-a-dataset-" * 2) / "test-images"
    assert main(["audit", "--data", str(missing), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"--data {missing}: no such file or folder" in err


@pytest.mark.parametrize("flags,names", [
    (["--seed", "-1"], ["--seed"]),
    (["--per-image", "-2"], ["--per-image"]),
    (["--device", "cuda:7"], ["--device cuda:7"]),
])
def test_bad_numbers_and_device(data, capsys, flags, names):
    run_failing(capsys, ["audit", "--data", str(data), *FAST, *flags], *names)


def test_database_that_cannot_be_reached(data, capsys, monkeypatch):
    monkeypatch.setenv("XICH_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    fast = [f for f in FAST if f != "--no-db"]
    run_failing(capsys, ["audit", "--data", str(data), *fast], "XICH_DATABASE_URL")


def test_unwritable_json_path(data, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    run_failing(capsys, ["audit", "--data", str(data), *FAST, "--json", str(tmp_path / "file" / "a.json")],
                str(tmp_path / "file"))


# --- train ---------------------------------------------------------------------------------------------

def test_train_on_a_device_that_is_not_here(data, tmp_path, capsys):
    out = tmp_path / "w.pt"
    argv = ["train", "--data", str(data), "--model", "cifar:resnet20", "--out", str(out), "--device", "cuda:7"]
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    err = run_failing(capsys, argv, "--device cuda:7")
    assert_says(err, "not usable here", "use cpu or cuda")
    assert not out.exists()


# --- python: models that fail at run time ----------------------------------------------------------------

FAILING_NETS = "xich_test_failing_nets"


@pytest.fixture
def failing_nets(tmp_path, monkeypatch) -> str:
    """A user module with a factory that raises and a model whose forward runs out of device memory."""
    (tmp_path / f"{FAILING_NETS}.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn


        def make_broken(num_classes):
            raise FileNotFoundError(2, "No such file or directory", "/nonexistent/pretrained.pt")


        class OutOfMemory(nn.Module):
            def __init__(self, num_classes):
                super().__init__()
                self.conv = nn.Conv2d(3, 8, 3, padding=1)
                self.head = nn.Linear(8, num_classes)

            def forward(self, x):
                if torch.jit.is_tracing():  # data-dependent control flow: XICH runs it eagerly
                    raise RuntimeError("not traceable")
                if x.shape[0] > 2:  # the 2-image probe fits; a real batch does not
                    # what CUDA's caching allocator raises when a batch does not fit
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                                 "capacity of 79.19 GiB of which 1.05 GiB is free.")
                return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


        def make_oom(num_classes):
            return OutOfMemory(num_classes)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield FAILING_NETS
    sys.modules.pop(FAILING_NETS, None)


def _runs(db: Path) -> list[tuple[str, str | None]]:
    """(status, error) of every audit run recorded in the SQLite file ``db``."""
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT status, error FROM audit_run WHERE {AUDITED_RUNS}").fetchall()


def test_python_model_factory_that_raises(data, failing_nets, capsys):
    spec = f"python:{failing_nets}:make_broken"
    err = run_failing(capsys, ["audit", "--data", str(data), *FAST, "--model", spec], repr(spec))
    assert_says(err, "make_broken() raised FileNotFoundError", "/nonexistent/pretrained.pt")


def test_out_of_memory_on_the_device(data, failing_nets, tmp_path, capsys, monkeypatch):
    db = tmp_path / "xich.db"
    monkeypatch.setenv("XICH_DATABASE_URL", f"sqlite:///{db}")
    spec = f"python:{failing_nets}:make_oom"
    err = run_failing(capsys, ["audit", "--data", str(data), *FAST, "--model", spec],
                      "out of memory on the device (CUDA out of memory. Tried to allocate 2.00 GiB)",
                      "lower --batch-size or use --device cpu")
    assert "GPU 0 has a total capacity" not in err  # only the start of torch's long message
    [(status, error)] = _runs(db)  # the run is recorded as failed, so a rerun resumes it
    assert status == "failed" and error.startswith("OutOfMemoryError: CUDA out of memory")


def test_unwritable_results_store_fails_before_any_forward_pass(data, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    db = tmp_path / "xich.db"
    monkeypatch.setenv("XICH_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("XICH_STORE_URL", str(blocker / "store"))
    run_failing(capsys, ["audit", "--data", str(data), *FAST], "results store", str(blocker / "store"))
    assert not db.exists()  # refused before the database was touched, let alone a model run


def test_unwritable_json_and_report_paths_fail_before_any_forward_pass(data, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    db = tmp_path / "xich.db"
    monkeypatch.setenv("XICH_DATABASE_URL", f"sqlite:///{db}")
    run_failing(capsys, ["audit", "--data", str(data), *FAST, "--json", str(blocker / "audit.json")],
                "--json", str(blocker / "audit.json"), "cannot write")
    run_failing(capsys, ["audit", "--data", str(data), *FAST, "--report", str(blocker / "report")],
                "--report", "cannot write")
    run_failing(capsys, ["audit", "--data", str(data), *FAST, "--json", str(tmp_path)], "is a folder")
    assert not db.exists()


def test_registry_times_that_are_not_times(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XICH_DATABASE_URL", f"sqlite:///{tmp_path / 'xich.db'}")
    run_failing(capsys, ["audit", "--data", str(data), *FAST, "--version-created-at", "last tuesday"],
                "--version-created-at 'last tuesday': not an ISO 8601 time")
    run_failing(capsys, ["audit", "--data", str(data), *FAST, "--registry-metadata", '{"created_at": "soon"}'],
                "--registry-metadata: created_at/creation_timestamp 'soon' is not a time")


def test_a_version_keeps_its_label_list(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XICH_DATABASE_URL", f"sqlite:///{tmp_path / 'xich.db'}")
    monkeypatch.setenv("XICH_STORE_URL", str(tmp_path / "store"))
    first, other = tmp_path / "first.txt", tmp_path / "other.txt"
    first.write_text("cat\ndog\n")
    other.write_text("dog\ncat\n")
    argv = ["audit", "--data", str(data), *FAST, "--model-name", "m", "--model-version", "v1", "--labels"]
    assert main(argv + [str(first)]) == 0
    capsys.readouterr()
    run_failing(capsys, argv + [str(other)], "--labels: model 'm' version 'v1' was recorded with another label list",
                "give a new --model-version")


# --- xich register ------------------------------------------------------------------------------------------

REGISTER = ["register", "--model", "m", "--version", "v1", "--spec", "cifar:resnet20"]


def _requests(tmp_path: Path) -> list:
    with sqlite3.connect(tmp_path / "reg.db") as db:
        return db.execute("SELECT dataset_uri, settings, run_id FROM audit_request").fetchall()


def test_register_refuses_an_unknown_setting(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XICH_DATABASE_URL", f"sqlite:///{tmp_path / 'reg.db'}")
    err = run_failing(capsys, [*REGISTER, "--dataset", str(data), "--settings", '{"clusters": 3, "clustres": 4}'],
                      "settings: unknown key(s) clustres")
    assert_says(err, "use batch_size, cam, classes, clustering, clusters")
    assert not (tmp_path / "reg.db").exists()  # refused before the database is opened


def test_register_refuses_a_missing_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XICH_DATABASE_URL", f"sqlite:///{tmp_path / 'reg.db'}")
    run_failing(capsys, [*REGISTER, "--dataset", str(tmp_path / "nowhere")],
                f"--dataset {tmp_path / 'nowhere'}: no such file or folder")
    assert not (tmp_path / "reg.db").exists()


def test_register_audit_without_a_prefect_server_keeps_the_registration(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XICH_DATABASE_URL", f"sqlite:///{tmp_path / 'reg.db'}")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens on the discard port
    run_failing(capsys, [*REGISTER, "--dataset", str(data), "--settings", '{"clusters": 2}', "--audit"],
                "the version is registered, but its audit did not start: Prefect at http://127.0.0.1:9/api",
                "the nightly audit-new-versions flow will also pick it up")
    assert _requests(tmp_path) == [(str(data), '{"clusters": 2}', None)]  # waiting for the nightly flow
