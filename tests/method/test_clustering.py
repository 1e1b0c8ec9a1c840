from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans

from xich.method.clustering import assign_clusters, cluster_embeddings, clustering_from_labels


def test_fewer_distinct_images_than_clusters():
    x = np.array([[0.0, 1.0], [0.0, 1.0], [5.0, 5.0]])
    c = cluster_embeddings(x, 5, random_state=0)
    assert c.n_clusters == 2 and c.requested == 5
    assert c.labels[0] == c.labels[1] != c.labels[2]
    one = cluster_embeddings(x[:1], 5, random_state=0)
    assert one.n_clusters == 1 and one.labels.tolist() == [0]


def test_seeded_and_assign_matches_kmeans_predict():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(m, 0.3, size=(40, 3)) for m in (0, 3, 6)])
    a = cluster_embeddings(x, 3, random_state=7)
    b = cluster_embeddings(x, 3, random_state=7)
    np.testing.assert_array_equal(a.labels, b.labels)
    km = KMeans(n_clusters=3, n_init=10, random_state=7).fit(x)
    new = rng.normal(3, 3, size=(50, 3))
    np.testing.assert_array_equal(assign_clusters(a, new), km.predict(new))
    np.testing.assert_array_equal(assign_clusters(a, x), a.labels)


def test_clustering_from_labels_keeps_membership_and_recentres():
    x = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0]])
    c = clustering_from_labels(x, np.array([1, 1, 0]))
    assert c.labels.tolist() == [1, 1, 0] and c.n_clusters == 2
    np.testing.assert_allclose(c.centers, [[10.0, 10.0], [1.0, 0.0]])
    np.testing.assert_array_equal(assign_clusters(c, np.array([[9.0, 9.0], [0.5, 0.0]])), [0, 1])
