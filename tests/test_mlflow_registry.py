"""xich.mlflow_registry without a server: which file of a folder is the checkpoint, credentials kept out of
what is stored and said, the report's link, and the least dominant share the write-back reports.
tests/test_hooks_mlflow.py covers the calls to a real MLflow server."""

from __future__ import annotations

import pytest

from builders import class_result, cluster, context_for
from xich.errors import XichError
from xich.records.mlflow_registry import checkpoint_in, resolve_weights, without_credentials, write_back
from xich.result import ClassResult, least_dominant_share
from xich.settings import get_settings

from test_hooks import checkpoint


def test_the_checkpoint_of_a_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "MLmodel").write_text("flavors: {}")
    (tmp_path / "data" / "model.pth").write_bytes(b"w")
    assert checkpoint_in(tmp_path, None, "runs:/r/model") == "data/model.pth"
    assert resolve_weights(str(tmp_path), weights_file=None, settings=get_settings()) == \
        (f"{tmp_path}/data/model.pth", tmp_path / "data" / "model.pth")
    (tmp_path / "extra.pt").write_bytes(b"w")
    with pytest.raises(XichError, match=r"^runs:/r/model: a folder holding 2 checkpoint files; name the one to audit "
                                        r"with the tag xich.weights_file"):  # never a listing of the folder
        checkpoint_in(tmp_path, None, "runs:/r/model")
    assert checkpoint_in(tmp_path, "extra.pt", "runs:/r/model") == "extra.pt"
    with pytest.raises(XichError, match=r"^runs:/r/model: no file 'other.pt' \(xich.weights_file\) in it$"):
        checkpoint_in(tmp_path, "other.pt", "runs:/r/model")
    with pytest.raises(XichError, match=r"a file, not a folder, so xich.weights_file 'x.pt' names nothing in it"):
        resolve_weights(str(tmp_path / "extra.pt"), weights_file="x.pt", settings=get_settings())
    logged = tmp_path / "logged"  # an MLflow 3 logged model: MLmodel and data/model.pt2, no state_dict
    (logged / "data").mkdir(parents=True)
    (logged / "MLmodel").write_text("flavors: {}")
    (logged / "data" / "model.pt2").write_bytes(b"exported program")
    with pytest.raises(XichError, match=r"^models:/m-1: a folder without a checkpoint file \(.pt, .pth, .th, .ckpt\); "
                                        r"XICH reads a state_dict: log one with mlflow.pytorch.log_state_dict"):
        checkpoint_in(logged, None, "models:/m-1")


def test_mlflow_sources_need_a_tracking_uri(tmp_path):
    with pytest.raises(XichError, match=r"^runs:/abc/model: XICH_MLFLOW_TRACKING_URI is not set; give the MLflow "
                                        r"server's address"):
        resolve_weights("runs:/abc/model", weights_file=None,
                        settings=get_settings(mlflow_tracking_uri=None, cache_dir=str(tmp_path)))


def test_credentials_are_dropped_from_uris():
    assert without_credentials("https://ci:t0ken@mlflow.example/api") == "https://mlflow.example/api"
    assert without_credentials("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def _class(name: str, hierarchy: list[int], shares: list[float | None]) -> ClassResult:
    return class_result(name, [cluster(i, train_share=s, eval_size=10) for i, s in enumerate(shares)],
                        hierarchy=hierarchy)


def test_least_dominant_share_is_the_mean_over_classes_of_the_last_clusters_training_share():
    classes = [_class("cat", [2, 0, 1], [0.5, 0.4, 0.1]),  # least dominant: cluster 1 (0.4)
               _class("dog", [0, 1, 2], [0.7, 0.2, 0.1]),  # cluster 2 (0.1)
               _class("ship", [], [0.3, 0.3, 0.4])]  # no hierarchy: left out
    assert least_dominant_share(classes) == pytest.approx(0.25)
    assert least_dominant_share([_class("cat", [1, 0], [None, None])]) is None  # no training split


def test_write_back_is_for_mlflow_versions_only():
    settings = get_settings(mlflow_tracking_uri=None)
    for metadata in (None, {}, {"hook": "generic", "pipeline": "ci-1"}):
        assert write_back(registry_metadata=metadata, model="m", version="1", result=None, report_uri="r",
                          settings=settings) is None
    with pytest.raises(XichError, match=r"^m 1 came from MLflow, but no tracking URI is known: set "
                                        r"XICH_MLFLOW_TRACKING_URI for the workers$"):
        write_back(registry_metadata={"registry": "mlflow", "tracking_uri": None}, model="m", version="1",
                   result=None, report_uri="r", settings=settings)


def test_workers_find_the_mlflow_server_recorded_with_the_version(tmp_path):
    from xich.records.mlflow_registry import tracking_uri_for
    from xich.records.registration import register

    url = f"sqlite:///{tmp_path / 'xich.db'}"
    checkpoint(tmp_path / "w.pt")  # registration reads its keys (xich.preflight)
    register(records=context_for(url), model="m", version="1", model_spec="cifar:resnet20", weights_uri=str(tmp_path / "w.pt"),
             dataset_uri=str(tmp_path), settings={},
             registry_metadata={"registry": "mlflow", "tracking_uri": "http://mlflow.internal:5000"})
    recorded = get_settings(database_url=url, mlflow_tracking_uri=None)
    assert tracking_uri_for(model="m", version="1", settings=recorded, engine=context_for(url).engine) == "http://mlflow.internal:5000"
    assert tracking_uri_for(model="m", version="2", settings=recorded, engine=context_for(url).engine) is None
    own = get_settings(database_url=url, mlflow_tracking_uri="http://127.0.0.1:5000")
    assert tracking_uri_for(model="m", version="1", settings=own, engine=context_for(url).engine) == "http://127.0.0.1:5000"  # the worker's own wins
