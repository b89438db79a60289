"""Text worlds: tokens, the synthetic language's entropy, perplexity, tiny LMs, both engines.

Numbers are worked out by hand where the test says so; training runs are real and tiny.
"""

import math

import numpy as np
import pytest
import torch

from peerkd.batched.cohort import Cohort, DeviceData
from peerkd.batched.stacked import stack_students
from peerkd.errors import ConfigError
from peerkd.student.models import build_model, check_modality
from peerkd.student.training import evaluate, predict_logits, score_logits, train_model
from peerkd.wire.protocol import RoundParams
from peerkd.world.build import WorldSpec, build_world
from peerkd.world.data import load_dataset
from peerkd.world.text import (
    ALPHABET,
    CharTokenizer,
    MarkovSource,
    bayes_cross_entropy,
    builtin_source,
    markov_source,
    read_text_file,
    stationary,
    text_summary,
    windows_to_samples,
)


def test_tokeniser_round_trip():
    # Prepare
    tok = CharTokenizer(ALPHABET)
    text = "the cat sat. on a mat"
    # Execute
    ids = tok.encode(text)
    # Assert: 't' is letter 20 (a = 1st), ' ' is 27th, '.' the 28th and last
    assert ids[0] == 19 and ids[3] == 26 and ids[11] == 27
    assert tok.decode(ids) == text
    with pytest.raises(ValueError, match="'!'"):
        tok.encode("hi!")


def test_perplexity_of_a_uniform_model_equals_the_vocabulary_size():
    # Prepare: equal logits over V = 28 tokens at 2 windows × 3 positions.
    v = 28
    logits = np.zeros((2 * 3, v), dtype=np.float32)
    y = np.array([[0, 5, 27], [3, 3, 1]])
    # Execute
    acc, loss = score_logits(logits, y)
    summary = text_summary("file", y, y, [{"loss": loss}])
    # Assert: CE = log 28 at every position, so perplexity = e^{log 28} = 28; argmax is token 0,
    # right once in 6 positions.
    assert loss == pytest.approx(math.log(28), rel=1e-6)
    assert summary["ppl_mean"] == pytest.approx(28.0, rel=1e-5)
    assert acc == pytest.approx(1 / 6)


def test_entropy_rate_of_a_two_token_chain_by_hand():
    # Prepare: P(·|0) = (0.9, 0.1), P(·|1) = (0.5, 0.5): stationary π = (5/6, 1/6) (π0·0.1 = π1·0.5).
    trans = np.array([[[0.9, 0.1], [0.5, 0.5]]])
    source = MarkovSource(trans, stationary(trans))
    # Execute
    rate = source.entropy_rates()[0]
    # Assert: H = 5/6·H(0.9, 0.1) + 1/6·log 2 = 5/6·0.325083 + 0.115525 = 0.386428 nats
    np.testing.assert_allclose(source.start[0], [5 / 6, 1 / 6])
    assert markov_source(vocab=5, styles=2, seed=1).trans.sum(axis=-1) == pytest.approx(np.ones((2, 5)))
    assert rate == pytest.approx(5 / 6 * -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) + math.log(2) / 6, rel=1e-9)
    assert rate == pytest.approx(0.386428, abs=1e-6)


def test_bayes_floor_of_two_styles_by_hand():
    # Prepare: two deterministic-ish styles over 2 tokens: style 0 always repeats, style 1
    # always alternates (π = (1/2, 1/2) for both). Window 0,0,0.
    trans = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    source = MarkovSource(trans + 1e-300, np.full((2, 2), 0.5))
    # Execute
    ce = bayes_cross_entropy(source, np.array([[0, 0, 0]]))
    # Assert: the first prediction mixes both styles (P(0) = 1/2), after which the style is known:
    # CE = (log 2 + 0) / 2 predicted tokens.
    assert ce == pytest.approx(math.log(2) / 2, rel=1e-9)


def test_builtin_language_floor_lies_between_its_entropy_rate_and_uniform():
    # Prepare
    data = load_dataset("synthtext", size=400)
    windows = np.concatenate([data.x[:, :1], data.y], axis=1)
    # Execute
    rates = builtin_source().entropy_rates()
    floor = bayes_cross_entropy(builtin_source(), windows)
    # Assert: the style must be inferred, so the floor is above the style-known rates (up to
    # sampling of 400 windows) and far below log V.
    assert data.x.shape == data.y.shape == (400, 32) and data.text and not data.tabular
    assert rates.mean() - 0.05 < floor < math.log(len(ALPHABET)) - 1.0


def test_a_gru_trained_on_a_known_source_approaches_its_entropy():
    # Prepare: one style over 6 tokens, token a followed by a+1 or a+2 (mod 6) with probability
    # 1/2 each: stationary π uniform, entropy rate log 2 = 0.693 nats (uniform guess: log 6 = 1.79).
    v = 6
    trans = np.zeros((1, v, v))
    for a in range(v):
        trans[0, a, [(a + 1) % v, (a + 2) % v]] = 0.5
    source = MarkovSource(trans, stationary(trans))
    rng = np.random.default_rng(0)
    train_x, train_y = windows_to_samples(source.sample(np.zeros(512, np.int64), 9, rng))
    test_x, test_y = windows_to_samples(source.sample(np.zeros(256, np.int64), 9, rng))
    model = build_model("gru", (8,), v, seed=0)
    torch.set_num_threads(1)  # a tiny model: one thread is faster on a loaded machine
    # Execute
    train_model(model, train_x, train_y, epochs=3, lr=1e-2, batch_size=32, seed=0)
    with torch.no_grad():
        _, loss = score_logits(model(torch.as_tensor(test_x)).reshape(-1, v).numpy(), test_y)
    # Assert: within 0.1 nats of the entropy rate (measured: 0.720 after 48 steps); no model beats
    # it by more than sampling noise.
    assert source.entropy_rates()[0] == pytest.approx(math.log(2))
    assert math.log(2) - 0.05 < loss < math.log(2) + 0.1


def test_text_file_windows_sources_and_alphabet(tmp_path):
    # Prepare: two sources named before a tab; 3 + 2 lines.
    path = tmp_path / "corpus.txt"
    lines = [f"poem\t{'roses are red ' * 6}"] * 3 + [f"news\t{'markets fell today ' * 6}"] * 2
    path.write_text("\n".join(lines) + "\n")
    # Execute
    windows, groups, alphabet, sources = read_text_file(path, seq_len=8)
    data = load_dataset("file", str(path))
    # Assert: 'poem' text is 3 × 84 characters + 3 newlines = 255 ids -> (255 - 1) // 8 = 31 windows
    assert sources == ("poem", "news")
    assert (groups == 0).sum() == 31 and windows.shape[1] == 9
    assert alphabet == "".join(sorted(set("roses are red markets fell today\n")))
    assert CharTokenizer(alphabet).decode(windows[0]) == "roses are"
    assert data.text and data.num_classes == len(alphabet) and data.name == "corpus"


def test_models_match_the_modality_and_fd_is_refused():
    # Execute / Assert
    with pytest.raises(ConfigError, match="students: mlp64 is not a language model"):
        check_modality("mlp64", text=True)
    with pytest.raises(ConfigError, match="students: gru is a language model"):
        check_modality("gru", text=False)
    from strategies.fd import FederatedDistillation

    with pytest.raises(ConfigError, match="strategy: fd averages logits per class"):
        FederatedDistillation().check_data(text=True)


@pytest.fixture(scope="module")
def text_world():
    """synthtext, 400 windows, 3 clients of 32 windows (1 step an epoch), 32 transfer windows."""
    return build_world(
        WorldSpec(dataset="synthtext", data_size=400, num_clients=3, seed=0, samples_per_client=32, transfer_size=32)
    )


@pytest.mark.parametrize("arch", ["gru", "tlm"])
def test_cohort_trains_lms_as_train_model(arch, text_world, train_alone):
    # Prepare: 3 students, the per-client path and one vmapped cohort, with transfer targets.
    w = text_world
    models = [build_model(arch, w.data.input_shape, w.num_classes, seed=1000 + c) for c in range(3)]
    base, params = stack_students(models)
    targets = [
        np.random.default_rng(c).standard_normal((w.transfer_rows, w.num_classes)).astype(np.float32) for c in range(3)
    ]
    rp = RoundParams(round=1, epochs=1, lr=1e-2, batch_size=16, alpha=0.5, temperature=2.0)
    # Execute
    cohort = Cohort(w, DeviceData.of(w, torch.device("cpu")), rp, base, [0, 1, 2])
    new, losses = cohort.train(params, targets)
    ref = train_alone(
        w, models, 1, targets, epochs=1, lr=1e-2, batch_size=16, transfer_x=w.transfer_x, alpha=0.5, temperature=2.0
    )
    # Assert: same losses, same transfer logits ((32 windows × 32 positions) rows of V). Weights
    # are compared through the logits: Adam moves a parameter whose true gradient is 0 (the
    # attention's key bias: softmax ignores a shift) by up to lr on float noise alone.
    np.testing.assert_allclose(losses, ref, rtol=1e-4, atol=1e-5)
    stacked = cohort.logits(new, cohort.data.transfer)
    assert stacked.shape == (3, 32 * 32, len(ALPHABET))
    for i, m in enumerate(models):
        np.testing.assert_allclose(stacked[i], predict_logits(m, w.transfer_x), rtol=1e-3, atol=1e-3)
    # next-token accuracy and nats per token on the test windows (of the per-client students), block by block
    test_x, test_y = w.split("test")
    for (acc, loss), m in zip(cohort.evaluate(stack_students(models)[1]), models):
        ref_acc, ref_loss = evaluate(m, test_x, test_y)
        assert acc == ref_acc and loss == pytest.approx(ref_loss, rel=1e-5)


def tiny_text_spec():
    from peerkd.round.spec import RunSpec

    world = WorldSpec(
        dataset="synthtext", data_size=400, num_clients=3, seed=0, samples_per_client=16, transfer_size=16
    )
    return RunSpec(world=world, rounds=2, epochs=1, students=("gru", "tlm"), batch_size=16)


def check_text_summary(summary, rule):
    assert summary["strategy"] == rule and summary["dataset"] == "synthtext" and len(summary["per_client"]) == 3
    assert 0.0 <= summary["acc_worst"] <= summary["acc_mean"] <= 1.0
    for row in summary["per_client"]:
        assert row["ppl"] == pytest.approx(math.exp(row["loss"]))
    # floor: exp(≈1.7) ≈ 5.4 < anything a 2-round student reaches < about V = 28 (plus untrained slack)
    assert summary["floor_ppl"] < summary["ppl_mean"] <= summary["ppl_worst"] * (1 + 1e-12) < 60  # fedavg: all equal


@pytest.mark.parametrize("engine", ["batched", "flower"])
@pytest.mark.parametrize("rule", ["peer", "teacher"])
def test_text_runs_end_to_end(rule, engine, tmp_path):
    # Prepare
    from simulations.runner import run_one
    from strategies import build_strategy

    spec = tiny_text_spec()
    settings = {"teacher": "tlm", "teacher_epochs": 1} if rule == "teacher" else {}
    strategy = build_strategy(rule, **settings)
    # Execute
    if engine == "batched":
        from peerkd.batched import run_batched

        summary = run_batched(spec, strategy, tmp_path, {"rule": rule}, device="cpu")
    else:
        summary = run_one(spec, strategy, tmp_path, {"rule": rule}, {"num_cpus": 1.0, "num_gpus": 0.0})
    # Assert: logits are (16 windows × 32 positions) × 28 float32 = 57,344 B + the .npy header,
    # down to each client every round for teacher; up from each client every round for peer.
    check_text_summary(summary, rule)
    logits_bytes = 16 * 32 * 28 * 4 + 128
    if rule == "teacher":
        assert summary["bytes_down"] == 2 * 3 * logits_bytes and summary["teacher_ppl"] > 1
    else:
        assert summary["bytes_up"] == 2 * 3 * logits_bytes


def test_report_shows_perplexity_and_paired_differences_for_text_runs():
    # Prepare: 2 seeds of peer and teacher at one grid point (literals, as report_io reads them).
    from simulations.report import group_runs
    from simulations.report_text import floor_level, perplexity_rows

    def run(rule, seed, ppl):
        summary = {"strategy": rule, "seed": seed, "ppl_mean": ppl, "floor_ppl": 5.0}
        if rule == "teacher":
            summary["teacher_ppl"] = 6.0
        return {"summary": summary, "config": {"partition.samples_per_client": 8}}

    runs = [run("peer", 0, 8.0), run("peer", 1, 10.0), run("teacher", 0, 9.0), run("teacher", 1, 9.0)]
    groups = group_runs(runs, ["partition.samples_per_client"])
    # Execute
    header, rows = perplexity_rows(groups, ["teacher", "peer"], ("peer", "teacher"))
    # Assert: peer 9 ± 1.414 (8, 10); teacher 9 ± 0; peer − teacher differences (−1, +1): mean 0.
    assert header[1:5] == ["teacher", "peer", "teacher model", "floor"]
    assert rows[0][1:5] == ["9.000 ± 0.000", "9.000 ± 1.414", "6.000 ± 0.000", "5.000 ± 0.000"]
    assert rows[0][5].startswith("+0.000 [")
    assert floor_level([*runs, run("peer", 2, 9.0)]) == 5.0


OTHER_RULES = ["wml", "dsfl", "fedmd", "feddf", "fedavg", "oracle", "teacher_pool", "fedproto", "fedtgp"]


@pytest.mark.parametrize("rule", OTHER_RULES)
def test_every_other_rule_runs_on_text_in_the_batched_engine(rule, tmp_path):
    # Prepare: one architecture (fedavg and feddf average weights), 2 rounds.
    import dataclasses

    from peerkd.batched import run_batched
    from strategies import build_strategy, rule_settings

    spec = dataclasses.replace(tiny_text_spec(), students=("tlm",))
    small_teacher = {"teacher": "tlm", "teacher_epochs": 1}
    strategy = build_strategy(rule, **{k: v for k, v in small_teacher.items() if k in rule_settings(rule)})
    # Execute
    summary = run_batched(spec, strategy, tmp_path, {"rule": rule}, device="cpu")
    # Assert: every client's reply was accepted in both rounds, and perplexity is reported.
    assert summary["rejected_replies"] == 0
    check_text_summary(summary, rule)


@pytest.mark.parametrize(
    ("data", "students"),
    [
        ({"name": "synthtext"}, ("tlm",)),
        ({"name": "mnist5k"}, ("mlp64",)),
        ({"name": "file", "path": "x.txt"}, ("tlm",)),
    ],
)
def test_students_follow_the_world_unless_named(data, students):
    from omegaconf import OmegaConf

    from simulations.config import RULE_NODES, RunConf, to_run_spec

    # Prepare: peerkd run's defaults with only the data changed
    cfg = OmegaConf.structured(RunConf(strategy=RULE_NODES["peer"]()))
    OmegaConf.update(cfg, "data", data, merge=True)
    # Execute / Assert: the default student is the world's kind's; a named one is kept (and checked later)
    assert to_run_spec(cfg).students == students
    OmegaConf.update(cfg, "students", ["auto", "mlp32"], merge=False)
    assert to_run_spec(cfg).students == (students[0], "mlp32")
    OmegaConf.update(cfg, "students", ["nope"], merge=False)
    with pytest.raises(ConfigError, match=r"students: unknown value 'nope' \(allowed: auto, cnn, "):
        to_run_spec(cfg)


def test_the_offline_corpus_is_python_s_help_one_source_per_topic(tmp_path):
    # Execute: write the corpus as the docs do (python -m simulations.corpus pydoc.txt), then read it as data=file.
    from pathlib import Path

    from peerkd.world.text import read_text_file
    from simulations.corpus import main as corpus_main

    corpus_main([str(tmp_path / "pydoc.txt")])
    windows, sources, alphabet, names = read_text_file(Path(tmp_path / "pydoc.txt"))
    # Assert: every help topic is a source; real English text, far larger than any test needs.
    from pydoc_data.topics import topics

    assert set(names) == set(topics) and len(windows) > 10_000
    assert "\t" not in alphabet and {"e", "t", " ", "\n"} <= set(alphabet)
    assert sources.max() == len(names) - 1


def test_text_worlds_count_predictions_not_windows_in_their_warnings():
    # 128-window shards predict 4,096 next tokens each: no "fewer than 5 per class" warning over 28 tokens.
    from peerkd.world.build import WorldSpec, build_world, split_warnings

    world = build_world(WorldSpec(dataset="synthtext", data_size=2000, num_clients=4, seed=0, samples_per_client=16))
    assert not [w for w in split_warnings(world) if "per class" in w]
