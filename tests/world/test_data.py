import numpy as np
import pytest

from peerkd.errors import ConfigError
from peerkd.world.build import WorldSpec, build_world
from peerkd.world.data import check_fractions, load_bytes, load_dataset, split_indices


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


@pytest.mark.parametrize(
    "name, shape, n", [("digits", (1, 8, 8), 1797), ("mnist5k", (1, 28, 28), 5000), ("mnist1d", (1, 40), 5000)]
)
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
    from peerkd.world.build import cap_shards

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


# --- own data: standardisation and split sizes (issue 14) -----------------------------------


def _write_csv(path, x, labels):
    rows = ["f0,f1,f2,kind"] + [f"{a:.6f},{b:.6f},{c:.6f},{k}" for (a, b, c), k in zip(x, labels)]
    path.write_text("\n".join(rows) + "\n")


def _file_world(path, **kw):
    return build_world(
        WorldSpec(
            dataset="file",
            data_path=str(path),
            data_label="kind",
            num_clients=2,
            partition="iid",
            min_size=1,
            test_frac=0.2,
            public_frac=0.2,
            server_frac=0.2,
            **kw,
        )
    )


def test_fit_scaler_by_hand():
    from peerkd.world.data import fit_scaler

    # Prepare: rows 0 and 1 are the reference; row 2 must play no part.
    x = np.array([[1.0, 5.0], [3.0, 5.0], [100.0, 0.0]], dtype=np.float32)
    # Execute
    s = fit_scaler(x, np.array([0, 1]), "public+server")
    # Assert: mean [2, 5]; std [1, 1] (the second feature is constant there, so it keeps std 1).
    np.testing.assert_allclose(s.mean, [2.0, 5.0])
    np.testing.assert_allclose(s.std, [1.0, 1.0])
    np.testing.assert_allclose(s.apply(x), [[-1.0, 0.0], [1.0, 0.0], [98.0, -5.0]])


def test_standardisation_uses_public_and_server_rows_only(tmp_path):
    # Prepare: 100 rows, 2 classes; a second file equal to the first except that its test rows are
    # shifted by +1000 and its private rows scaled by 10. Splits depend only on labels and seed.
    rng = np.random.default_rng(0)
    x, labels = rng.normal(5.0, 3.0, (100, 3)), ["a", "b"] * 50
    _write_csv(tmp_path / "plain.csv", x, labels)
    plain = _file_world(tmp_path / "plain.csv")
    test, pool = plain.splits.test, plain.splits.pool
    shifted = x.copy()
    shifted[test] += 1000.0
    shifted[pool] *= 10.0
    _write_csv(tmp_path / "shifted.csv", shifted, labels)
    # Execute
    moved = _file_world(tmp_path / "shifted.csv")
    # Assert: the statistics come from the 40 public + server rows, so neither change moves them ...
    ref = np.concatenate([plain.splits.public, plain.splits.server])
    assert plain.scaler.rows == 40 and plain.scaler.source == "public+server"
    np.testing.assert_allclose(plain.scaler.mean, x[ref].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(moved.scaler.mean, plain.scaler.mean)
    np.testing.assert_allclose(moved.scaler.std, plain.scaler.std)
    # ... the transfer inputs are identical, and the test rows move by exactly 1000 / std.
    np.testing.assert_allclose(moved.transfer_x, plain.transfer_x, atol=1e-5)
    step = np.broadcast_to(1000.0 / plain.scaler.std, (len(test), 3))
    np.testing.assert_allclose(moved.data.x[test] - plain.data.x[test], step, rtol=1e-4)
    # The reference rows come out with mean 0 and std 1.
    np.testing.assert_allclose(plain.data.x[ref].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(plain.data.x[ref].std(axis=0), 1.0, atol=1e-5)


def test_standardisation_opt_out_and_images_untouched(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(50.0, 10.0, (60, 3))
    _write_csv(tmp_path / "t.csv", x, ["a", "b", "c"] * 20)
    raw = _file_world(tmp_path / "t.csv", standardize=False)
    assert raw.scaler is None
    np.testing.assert_allclose(raw.data.x, x.astype(np.float32), rtol=1e-5)
    # Images (an .npz of (N, H, W)) and the built-ins are never standardised.
    np.savez(tmp_path / "imgs.npz", x=rng.random((60, 4, 4)) * 255, y=np.arange(60) % 3)
    imgs = build_world(
        WorldSpec(dataset="file", data_path=str(tmp_path / "imgs.npz"), num_clients=2, partition="iid", min_size=1)
    )
    assert imgs.scaler is None and imgs.data.x.max() > 200
    digits = build_world(WorldSpec(dataset="digits", num_clients=3))
    assert digits.scaler is None
    np.testing.assert_array_equal(digits.data.x, load_dataset("digits").x)


def test_small_files_get_larger_test_splits():
    from peerkd.world.data import file_fractions

    # wine: 178 rows, 3 classes -> test 50/178 = 0.281; transfer and server want 15/178 = 0.084 < 0.1.
    assert file_fractions(None, None, None, 178, 3) == (0.281, 0.1, 0.1)
    # 60 rows, 2 classes: test capped at 0.3; transfer and server 10/60 = 0.167.
    assert file_fractions(None, None, None, 60, 2) == (0.3, 0.167, 0.167)
    # A big file keeps 0.2 / 0.1 / 0.1; a fraction the user set is kept as set.
    assert file_fractions(None, None, None, 5000, 10) == (0.2, 0.1, 0.1)
    assert file_fractions(0.5, None, 0.0, 178, 3) == (0.5, 0.1, 0.0)


def test_split_report_and_warnings_for_a_small_file(tmp_path):
    from peerkd.world.build import split_report, split_warnings

    # Prepare: 40 rows, 2 classes: 8 test rows, 8 transfer, 8 server, 16 private over 2 clients.
    _write_csv(tmp_path / "tiny.csv", np.random.default_rng(2).normal(size=(40, 3)), ["a", "b"] * 20)
    # Execute
    world = _file_world(tmp_path / "tiny.csv")
    lines, warnings = split_report(world), split_warnings(world)
    # Assert: every split is named with its size ...
    assert lines[0].startswith("tiny: 40 rows, input shape (3,), 2 classes")
    assert "test           8 rows" in lines[1] and "transfer       8 inputs" in lines[2]
    assert "server         8 rows" in lines[3]
    assert "private       16 rows    over 2 clients: 8, 8" in lines[4]
    assert "standardised with the mean and std of the 16 public+server rows" in lines[5]
    # ... and too-small ones are warned about: test < 50 rows, transfer and server < 5 per class = 10 rows,
    # private < 10 rows per client.
    assert len(warnings) == 4
    assert warnings[0].startswith("the test split has 8 rows (< 50)") and "±0.35" in warnings[0]
    assert warnings[1].startswith("the transfer set has 8 inputs (< 5 per class = 10)")
    assert warnings[2].startswith("the server split has 8 rows (< 5 per class = 10)")
    assert warnings[3].startswith("2 of 2 clients hold fewer than 10 private rows")
    # A big built-in world has nothing to warn about.
    assert split_warnings(build_world(WorldSpec(dataset="digits", num_clients=3))) == []


def test_world_cache_keeps_the_scaler(tmp_path):
    from peerkd.world.build import load_world, save_world

    _write_csv(tmp_path / "t.csv", np.random.default_rng(3).normal(size=(60, 3)), ["a", "b"] * 30)
    world = _file_world(tmp_path / "t.csv")
    save_world(world, tmp_path / "w.npz")
    back = load_world(tmp_path / "w.npz", world.spec)
    np.testing.assert_array_equal(back.scaler.std, world.scaler.std)
    assert (back.scaler.rows, back.scaler.source) == (world.scaler.rows, "public+server")
    np.testing.assert_array_equal(back.data.x, world.data.x)


def test_a_csv_with_only_the_label_column_is_refused(tmp_path):
    # Prepare: a label column and nothing to learn from.
    path = tmp_path / "labels.csv"
    path.write_text("label\n" + "\n".join(str(i % 2) for i in range(20)) + "\n")
    # Execute / Assert
    with pytest.raises(ConfigError, match="data.path: .* has no feature columns, only the label 'label'"):
        load_dataset("file", str(path))


def test_load_bytes_by_hand_without_loading(tmp_path):
    # Generated: per sample, as measured (synth 2,100 B, synthtext 1,000 B); defaults 20,000 / 4,000.
    assert load_bytes("synth", size=1000) == 2_100_000
    assert load_bytes("synth") == 20_000 * 2_100
    assert load_bytes("synthtext", size=500) == 500_000
    # Fixed: 1,797 digits of 64 pixels, float64 then float32 (12 bytes a pixel).
    assert load_bytes("digits") == 1797 * 64 * 12 == 1_380_096
    # Files: a CSV 10 bytes per byte on disk, an .npz twice its arrays' uncompressed size, a missing file 0.
    (tmp_path / "a.csv").write_text("f,label\n" + "1,0\n" * 25)  # 8 + 100 = 108 bytes
    assert load_bytes("file", str(tmp_path / "a.csv")) == 1080
    np.savez_compressed(tmp_path / "b.npz", x=np.zeros((100, 4), np.float32), y=np.zeros(100, np.int64))
    npy = 2 * 128 + 100 * 4 * 4 + 100 * 8  # two .npy headers of 128 bytes, then the data
    assert load_bytes("file", str(tmp_path / "b.npz")) == 2 * npy
    assert load_bytes("file", str(tmp_path / "missing.csv")) == 0


def test_check_fractions():
    check_fractions(0.2, 0.1, 0.1)
    with pytest.raises(ConfigError, match=r"data.public_frac: 1.0 is out of range \(allowed: \[0, 1\)\)"):
        check_fractions(0.0, 1.0, 0.0)
    with pytest.raises(ConfigError, match="= 1 leaves no private pool"):
        check_fractions(0.5, 0.25, 0.25)
