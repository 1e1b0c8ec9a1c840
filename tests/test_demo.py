from __future__ import annotations

from xich.demo import locate_rare
from xich.result import AuditResult, ClassResult, ClusterResult


def _cluster(cid, rank, members, share):
    return ClusterResult(id=cid, eval_size=len(members), train_count=None, train_share=share, score=0.5, rank=rank,
                         members=members)


def test_locate_rare_hand_built():
    cls = ClassResult(index=0, name="circle", clusters=[
        _cluster(0, 0, ["circle/0.png", "circle/1.png"], 0.6),
        _cluster(1, 2, ["circle/2.png", "circle/3.png", "circle/4.png"], 0.1),
        _cluster(2, 1, ["circle/5.png"], 0.3)],
        dominance=[[None, 0.8, 0.6], [0.2, None, 0.4], [0.4, 0.6, None]], dominance_ci=[], p_values=[],
        p_values_holm=[[1.0, 0.01, 0.2], [0.01, 1.0, 0.03], [0.2, 0.03, 1.0]], distinct_sets=[], hierarchy=[0, 2, 1],
        spearman_score_train_share=None,
        excluded_mosaics=0, mosaics=[])
    result = AuditResult(run_id="r", model={}, labels={}, dataset={"eval_split": "test"}, config={}, classes=[cls],
                         summary={})
    truth = {"rare": {"circle": 1},
             "subgroup": {"test/circle/0.png": 0, "test/circle/1.png": 1, "test/circle/2.png": 1,
                          "test/circle/3.png": 1, "test/circle/4.png": 2, "test/circle/5.png": 2}}
    [f] = locate_rare(result, truth)
    assert (f.cluster, f.rare_in_cluster, f.rare_total, f.rank, f.train_share) == (1, 2, 3, 2, 0.1)
    assert f.losses == 2  # clusters 0 (D 0.8, p 0.01) and 2 (D 0.6, p 0.03) beat it; none else significant
    assert f.found  # rank 2 of 3: second-least dominant
