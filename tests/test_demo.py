from __future__ import annotations

from builders import audit_result, class_result, cluster
from xich.demo import locate_rare


def _cluster(cid, rank, members, share):
    return cluster(cid, rank=rank, score=0.5, train_share=share, members=members)


def test_locate_rare_hand_built():
    cls = class_result("circle", [
        _cluster(0, 0, ["circle/0.png", "circle/1.png"], 0.6),
        _cluster(1, 2, ["circle/2.png", "circle/3.png", "circle/4.png"], 0.1),
        _cluster(2, 1, ["circle/5.png"], 0.3)],
        dominance=[[None, 0.8, 0.6], [0.2, None, 0.4], [0.4, 0.6, None]],
        p_values=[[1.0, 0.01, 0.2], [0.01, 1.0, 0.03], [0.2, 0.03, 1.0]])
    assert cls.hierarchy == [0, 2, 1]
    result = audit_result([cls], dataset={"eval_split": "test"})
    truth = {"rare": {"circle": 1},
             "subgroup": {"test/circle/0.png": 0, "test/circle/1.png": 1, "test/circle/2.png": 1,
                          "test/circle/3.png": 1, "test/circle/4.png": 2, "test/circle/5.png": 2}}
    [f] = locate_rare(result, truth)
    assert (f.cluster, f.rare_in_cluster, f.rare_total, f.rank, f.train_share) == (1, 2, 3, 2, 0.1)
    assert f.losses == 2  # clusters 0 (D 0.8, p 0.01) and 2 (D 0.6, p 0.03) beat it; none else significant
    assert f.found  # rank 2 of 3: second-least dominant
