import numpy as np

from ladd.evaluation.metrics import alignment, diversity, failure, frechet_distance, satisfies


def obj(shape, color="red", size="small", position="center"):
    return {"shape": shape, "color": color, "size": size, "position": position}


def test_alignment_rule():
    spec = [{"shape": "circle", "color": "red"}, {"shape": "square"}]
    assert satisfies(spec, [obj("square", "blue", position="top"), obj("circle", "red")])
    assert not satisfies(spec, [obj("square", "blue"), obj("circle", "green")])  # wrong color
    assert not satisfies(spec, [obj("circle", "red")])  # too few
    assert not satisfies(spec, [obj("circle"), obj("square", position="top"), obj("square", position="left")])  # too many
    assert not satisfies(spec, [obj("circle", "red"), obj("circle", "red", position="top")])  # no square
    # counting: both objects must match the same partial spec
    assert satisfies([{"shape": "cross"}] * 2, [obj("cross", position="top"), obj("cross", "blue")])
    assert not satisfies([{"shape": "cross"}] * 2, [obj("cross"), obj("circle", position="top")])
    # an assignment must be one-to-one
    assert not satisfies([{"color": "red"}, {"shape": "circle", "color": "blue"}], [obj("circle", "red"), obj("square", "red")])
    assert satisfies([{"position": "top left"}], [obj("triangle", position="top left")])


def test_alignment_by_category():
    prompts = [{"objects": [{"shape": "circle"}], "category": "a"}, {"objects": [{"shape": "square"}], "category": "b"}]
    res = alignment(prompts, [[obj("circle")], [obj("circle")], [obj("square")]], [0, 1, 1])
    assert res["alignment"] == 2 / 3
    assert res["alignment_by_category"] == {"a": 1.0, "b": 0.5}


def test_frechet_distance():
    rng = np.random.default_rng(0)
    mu, sigma = np.zeros(4), np.eye(4)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8
    assert abs(frechet_distance(mu, sigma, mu + 1, sigma) - 4.0) < 1e-8  # mean shift of 1 in 4 dims
    assert abs(frechet_distance(mu, sigma, mu, 4 * sigma) - 4.0) < 1e-6  # tr(I + 4I - 2*2I) = 4


def test_diversity():
    f = np.array([[0.0, 0], [3, 4], [1, 1], [1, 1]])
    assert diversity(f, [0, 0, 1, 1]) == 2.5  # mean of 5 and 0


def test_failure_says_why_and_failures_sum_to_the_misses():
    spec = [{"shape": "circle"}, {"shape": "square"}]
    assert failure(spec, [obj("square"), obj("circle")]) is None
    assert failure(spec, [obj("circle")]) == "too_few"
    assert failure(spec, [obj("circle"), obj("square"), obj("square")]) == "too_many"
    assert failure(spec, [obj("triangle"), obj("triangle")]) == "attributes"  # two objects, wrong shapes
    prompts = [{"category": "two_objects", "objects": spec}]
    reads = [[obj("square"), obj("circle")], [obj("circle")], [obj("circle"), obj("circle")], [obj("circle")]]
    a = alignment(prompts, reads, [0, 0, 0, 0])
    assert a["alignment"] == 0.25
    assert a["failures_by_category"]["two_objects"] == {"too_few": 0.5, "too_many": 0.0, "attributes": 0.25}


def test_pair_binding_shares_on_hand_made_readbacks():
    """benchmarks/pair_binding.py: one shape twice, the named pair in and out of reading order, a third object."""
    import sys

    sys.path.insert(0, "benchmarks")
    from pair_binding import binding

    pair = {"category": "two_objects", "objects": [{"shape": "circle"}, {"shape": "triangle"}]}
    prompts = [pair, {"objects": [{"shape": "circle", "position": "top"}, {"shape": "square"}]}]

    def row(i, ok, *read):  # read: (shape, cell) pairs
        return {"prompt_index": i, "ok": ok, "read": [obj(shape, position=cell) for shape, cell in read]}

    rows = [
        row(0, False, ("triangle", "top"), ("triangle", "bottom")),  # one shape twice
        row(0, True, ("triangle", "bottom"), ("circle", "top left")),  # the first-named shape first
        row(0, True, ("triangle", "top left"), ("circle", "right")),  # the other way round
        row(0, False, ("circle", "top"), ("triangle", "left"), ("circle", "right")),  # a third object
        row(1, True, ("circle", "top"), ("square", "left")),  # a prompt that states a position: not counted
    ]
    r = binding(prompts, rows)
    assert (r["images"], r["pass"], r["two"], r["n_two"], r["n_both"]) == (4, 0.5, 0.75, 3, 2)
    assert r["same"] == round(1 / 3, 3) and r["first_first"] == 0.5
    assert binding(prompts, rows, "two_objects") == r and binding(prompts, rows, "color_attr")["images"] == 0
