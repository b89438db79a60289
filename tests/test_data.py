import numpy as np
import pytest

from peerkd.data import load_dataset, split_indices
from peerkd.errors import ConfigError
from peerkd.world import WorldSpec, build_world


def test_splits_are_disjoint_cover_everything_and_keep_class_proportions():
    # Prepare: 10 classes × 100 samples.
    labels = np.repeat(np.arange(10), 100)
    # Execute
    s = split_indices(labels, test=0.2, public=0.1, server=0.1, rng=np.random.default_rng(0))
    # Assert: sizes by hand (20/10/10/60 per class), disjoint, covering.
    assert (len(s.test), len(s.public), len(s.server), len(s.pool)) == (200, 100, 100, 600)
    together = np.concatenate([s.test, s.public, s.server, s.pool])
    assert len(np.unique(together)) == len(labels) == len(together)
    assert np.bincount(labels[s.test]).tolist() == [20] * 10


def test_splits_depend_only_on_seed():
    labels = np.repeat(np.arange(3), 50)
    a = split_indices(labels, 0.2, 0.2, 0.0, np.random.default_rng(7))
    b = split_indices(labels, 0.2, 0.2, 0.0, np.random.default_rng(7))
    c = split_indices(labels, 0.2, 0.2, 0.0, np.random.default_rng(8))
    np.testing.assert_array_equal(a.test, b.test)
    assert not np.array_equal(a.test, c.test)
    assert len(a.server) == 0


def test_splits_refuse_fractions_leaving_no_pool():
    with pytest.raises(ConfigError, match="no private pool"):
        split_indices(np.zeros(10, int), 0.5, 0.3, 0.2, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="data.test_frac"):
        split_indices(np.zeros(10, int), 1.2, 0.0, 0.0, np.random.default_rng(0))


@pytest.mark.parametrize("name, shape, n", [("digits", (1, 8, 8), 1797), ("mnist5k", (1, 28, 28), 5000), ("mnist1d", (1, 40), 5000)])
def test_builtin_datasets_load_offline(name, shape, n):
    d = load_dataset(name)
    assert d.x.shape == (n, *shape) and d.x.dtype == np.float32
    assert d.num_classes == 10 and sorted(np.unique(d.y)) == list(range(10))
    assert np.isfinite(d.x).all()


def test_mnist5k_labels_are_balanced_not_a_pixel_column():
    assert np.bincount(load_dataset("mnist5k").y).tolist() == [500] * 10


def test_csv_with_named_label_column(tmp_path):
    path = tmp_path / "toy.csv"
    rows = ["f1,f2,kind"] + [f"{i},{i * 2},{'cat' if i % 2 else 'dog'}" for i in range(20)]
    path.write_text("\n".join(rows) + "\n")
    d = load_dataset("file", str(path), "kind")
    assert d.x.shape == (20, 2) and d.num_classes == 2
    assert d.class_names == ("cat", "dog")
    np.testing.assert_array_equal(d.x[3], [3.0, 6.0])
    assert d.y[3] == 0  # 'cat' sorts first


def test_npz_file_and_image_channel_axis(tmp_path):
    path = tmp_path / "imgs.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((30, 5, 5)), y=np.arange(30) % 3)
    d = load_dataset("file", str(path))
    assert d.input_shape == (1, 5, 5) and d.num_classes == 3


@pytest.mark.parametrize(
    "content, label, field, match",
    [
        ("a,b,label\n1,2,0\n3,4\n", "label", "data.path", "line 3 has 2 fields"),
        ("a,b,label\n1,x,0\n", "label", "data.path", "line 2"),
        ("a,b,y\n1,2,0\n", "label", "data.label", "no column 'label'"),
        ("", "label", "data.path", "empty"),
    ],
)
def test_malformed_csv_names_the_field(tmp_path, content, label, field, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match) as err:
        load_dataset("file", str(path), label)
    assert err.value.field == field


def test_missing_or_unknown_data_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_dataset("file", str(tmp_path / "nope.npz"))
    with pytest.raises(ConfigError, match="unsupported suffix"):
        load_dataset("file", str(tmp_path / "x.parquet"))
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'") as err:
        load_dataset("cifar")
    assert "digits" in str(err.value) and err.value.field == "data"


def test_world_gives_each_client_its_own_disjoint_shard():
    w = build_world(WorldSpec(dataset="digits", num_clients=4, partition="iid", seed=3))
    shards = [w.splits.pool[p] for p in w.partitions]
    assert sum(len(s) for s in shards) == len(w.splits.pool)
    assert len(np.unique(np.concatenate(shards))) == len(w.splits.pool)
    assert not set(np.concatenate(shards)) & set(w.splits.test) & set(w.splits.public)
    x, y = w.private(2)
    assert len(x) == len(y) == len(w.partitions[2])


def test_samples_per_client_caps_shards_with_a_seeded_subset():
    from peerkd.world import cap_shards

    parts = [np.arange(10), np.arange(10, 13)]
    capped = cap_shards(parts, 4, np.random.default_rng(0))
    assert [len(p) for p in capped] == [4, 3]  # the short shard is kept whole
    assert set(capped[0]) <= set(range(10))
    w = build_world(WorldSpec(dataset="digits", num_clients=4, partition="iid", samples_per_client=25, seed=1))
    assert [len(p) for p in w.partitions] == [25] * 4


def test_synth_is_generated_at_any_size_and_seeded():
    a, b = load_dataset("synth", size=1_000), load_dataset("synth", size=1_000)
    assert a.x.shape == (1_000, 40) and a.num_classes == 10 and a.x.dtype == np.float32
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert len(load_dataset("synth").y) == 20_000  # the default size


def test_size_is_refused_for_fixed_size_datasets():
    with pytest.raises(ConfigError, match="^data.size: only synth"):
        load_dataset("digits", size=500)
