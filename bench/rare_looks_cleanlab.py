"""cleanlab's Datalab ``underperforming_group`` issue type on the rare-look benchmark's cases (a peer, run for real).

Run by bench/rare_looks.py in the benchmark-only virtual environment that has ``cleanlab[datalab]`` (the
``peers`` extra; never the service's environment):

    PEERS_PYTHON bench/rare_looks_cleanlab.py IN.npz OUT.npz

IN holds, per case key ``<k>``: ``<k>/pred_probs`` (N, K), ``<k>/features`` (N, C), ``<k>/labels`` (N,) and
``<k>/clusters`` (N,) (XICH's cluster ids, made unique across classes). OUT holds, per key and mode (``own``:
Datalab clusters the features itself, DBSCAN on a k-NN graph; ``xich``: Datalab is given XICH's cluster ids),
``<k>/<mode>/flag`` (N,) and ``<k>/<mode>/score`` (N,) (the issue score: low = worse group).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np


def main(src: str, dst: str) -> None:
    import cleanlab
    from cleanlab import Datalab

    warnings.filterwarnings("ignore")
    data = np.load(src)
    keys = sorted({k.rsplit("/", 1)[0] for k in data.files})
    out = {"__version__": np.array(cleanlab.__version__)}
    for key in keys:
        probs, feats = data[f"{key}/pred_probs"], data[f"{key}/features"]
        labels, clusters = data[f"{key}/labels"], data[f"{key}/clusters"]
        for mode in ("own", "xich"):
            lab = Datalab(data={"y": labels.tolist()}, label_name="y", verbosity=0)
            if mode == "own":
                lab.find_issues(pred_probs=probs, features=feats, issue_types={"underperforming_group": {}})
            else:
                lab.find_issues(pred_probs=probs,
                                issue_types={"underperforming_group": {"cluster_ids": clusters.astype(int)}})
            issues = lab.get_issues("underperforming_group")
            out[f"{key}/{mode}/flag"] = issues["is_underperforming_group_issue"].to_numpy(dtype=bool)
            out[f"{key}/{mode}/score"] = issues["underperforming_group_score"].to_numpy(dtype=float)
    np.savez(dst, **out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
