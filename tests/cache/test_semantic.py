import numpy as np

from velollmd.cache.embed import HashingEmbedder
from velollmd.cache.semantic import SemanticIndex

EMB = HashingEmbedder(384)
THRESHOLD = 0.9


def vec(text):
    return EMB.embed([text])[0]


def index(capacity=16, **kw):
    return SemanticIndex(capacity, EMB.dim, threshold=THRESHOLD, **kw)


def test_embedder_is_normalised_and_stable():
    v = EMB.embed(["Hello world", ""])
    assert v.shape == (2, 384) and v.dtype == np.float32
    assert abs(np.linalg.norm(v[0]) - 1) < 1e-5 and not v[1].any()
    # fixed hash functions: the same vector in every process (snapshots depend on it)
    assert np.flatnonzero(EMB.embed_one("abc")).tolist() == \
        np.flatnonzero(HashingEmbedder(384).embed_one("abc")).tolist()


def test_paraphrase_hits_within_partition():
    idx = index()
    idx.add("p1", "k1", "How do I reverse a list in Python?", vec("How do I reverse a list in Python?"))
    q = "how can I reverse a list in python, please"
    match = idx.search("p1", vec(q), q)
    assert match is not None and match.key == "k1" and match.similarity >= THRESHOLD
    assert idx.search("p2", vec(q), q) is None            # other partition


def test_guard_rails_reject_high_cosine_near_misses():
    idx = SemanticIndex(16, EMB.dim, threshold=0.8)
    stored = "Write a function that sorts a list of integers and returns 5 items"
    idx.add("p", "k", stored, vec(stored))
    for q in ("Write a function that sorts a list of integers and returns 6 items",
              "Write a function that doesn't sort a list of integers and returns 5 items"):
        assert float(vec(q) @ vec(stored)) >= 0.8          # the embedder alone would hit
        assert idx.search("p", vec(q), q) is None
    assert idx.num_guard_rejects == 2


def test_best_candidate_wins_and_small_partition_is_gathered():
    idx = index(capacity=64)
    for i in range(40):
        idx.add("big", f"b{i}", f"topic {i}", vec(f"topic number {i} filler"))
    idx.add("small", "s1", "explain the moon landings", vec("explain the moon landings"))
    idx.add("small", "s2", "explain moon landing", vec("explain moon landing"))
    rows, sims = idx.scores("small", vec("explain moon landing"))
    assert sorted(idx.row_key[r] for r in rows) == ["s1", "s2"]
    match = idx.search("small", vec("explain moon landing"), "explain moon landing")
    assert match.key == "s2" and abs(match.similarity - 1.0) < 1e-5


def test_lru_eviction_when_full():
    idx = index(capacity=3)
    for k in "abc":
        idx.add("p", k, f"question {k}", vec(f"question {k}"))
    idx.search("p", vec("question a"), "question a")      # touch a
    idx.add("p", "d", "question d", vec("question d"))
    assert len(idx) == 3 and idx.num_evictions == 1
    assert idx.search("p", vec("question b"), "question b") is None
    assert idx.search("p", vec("question a"), "question a").key == "a"


def test_remove_frees_row_and_partition():
    idx = index(capacity=2)
    idx.add("p", "a", "x y z", vec("x y z"))
    assert idx.remove("a") and not idx.remove("a")
    assert len(idx) == 0 and idx.scores("p", vec("x y z"))[0].size == 0
    idx.add("q", "b", "x y z", vec("x y z"))
    assert idx.num_used_rows == 1                         # the freed row was reused


def test_float16_matches_float32():
    a, b = index(capacity=32), index(capacity=32, dtype="float16")
    for i in range(20):
        for idx in (a, b):
            idx.add("p", f"k{i}", f"text {i}", vec(f"some text number {i}"))
    q = vec("some text number 7")
    _, s32 = a.scores("p", q)
    _, s16 = b.scores("p", q)
    assert np.allclose(s32, s16, atol=2e-3)


def test_export_import_round_trip():
    a = index()
    for k in "abc":
        a.add(f"p{k}", k, f"text {k}", vec(f"text {k}"))
    meta, vectors = a.export_rows()
    b = index()
    b.import_rows(meta, vectors)
    assert b.export_rows()[0] == meta
    assert np.array_equal(b.export_rows()[1], vectors)
    assert b.search("pb", vec("text b"), "text b").key == "b"
