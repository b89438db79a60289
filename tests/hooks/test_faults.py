"""Injected faults and attackers (peerkd/faults.py): the seeded plan, the forgeries, and real
runs on both engines that record what was injected and finish."""

import dataclasses
import json
import re

import numpy as np
import pytest

from peerkd.batched import run_batched
from peerkd.errors import ConfigError
from peerkd.hooks.faults import HUGE_SCALE, WRONG_MARGIN, AttackSpec, FaultPlan, FaultSpec, attack_array
from peerkd.round.results import read_jsonl
from peerkd.round.spec import RunSpec
from peerkd.wire.codec import Codec
from peerkd.world.build import WorldSpec
from simulations.runner import run_one
from strategies import build_strategy

CPU = {"num_cpus": 1.0, "num_gpus": 0.0}


def plan(seed=0, clients=10, **faults) -> FaultPlan:
    attack = AttackSpec(**{k[7:]: faults.pop(k) for k in list(faults) if k.startswith("attack_")})
    return FaultPlan(FaultSpec(**faults), attack, seed, clients)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"crash_prob": 1.5}, "faults.crash_prob"),
        ({"delay": "pareto"}, "faults.delay"),
        ({"delays": "sometimes"}, "faults.delays"),
        ({"late_round": 1}, "faults.late_round"),
        ({"delay_mean": -1.0}, "faults.delay_mean"),
    ],
)
def test_bad_fault_settings_name_their_field(settings, field):
    with pytest.raises(ConfigError, match=field):
        FaultSpec(**settings)


def test_bad_attack_settings_name_their_field():
    with pytest.raises(ConfigError, match="attack.kind"):
        AttackSpec(kind="polite")
    with pytest.raises(ConfigError, match="attack.fraction"):
        AttackSpec(fraction=-0.1)
    with pytest.raises(ConfigError, match=r"attack.fraction: 1.0 is out of range \(allowed: \[0, 1\)\)"):
        AttackSpec(fraction=1.0)  # no honest client would be left to measure


def test_an_attack_fraction_that_rounds_to_the_whole_fleet_is_refused():
    # 0.95 of 10 clients rounds to 10 attackers; 0.9 leaves one honest client.
    with pytest.raises(ConfigError, match="0.95 of 10 clients rounds to 10 attackers and no honest client"):
        AttackSpec(0.95).check_fleet(10)
    AttackSpec(0.9).check_fleet(10)
    AttackSpec(0.0).check_fleet(1)


def test_crashes_depend_on_seed_round_and_client_alone():
    # Prepare: two plans of the same seed, one of another seed.
    a, b, other = plan(crash_prob=0.3), plan(crash_prob=0.3), plan(seed=1, crash_prob=0.3)
    cells = [(r, c) for r in range(1, 201) for c in range(50)]
    # Execute
    crashes = [a.crashed(r, c) for r, c in cells]
    # Assert: the same seed gives the same schedule, in any order of asking; the rate is the probability.
    assert crashes == [b.crashed(r, c) for r, c in reversed(cells)][::-1]
    assert crashes != [other.crashed(r, c) for r, c in cells]
    assert abs(np.mean(crashes) - 0.3) < 0.02  # 10,000 draws: std of the rate 0.0046
    assert not any(plan(crash_prob=0.0).crashed(r, c) for r, c in cells)


def test_dropout_is_for_good_and_late_joiners_join_in_range():
    p = plan(dropout_prob=0.2, late_fraction=0.3, late_round=4)
    for client in range(10):
        left = p.left_in(20, client)
        if left is not None:
            assert all(p.left_in(r, client) == left for r in range(left, 21))  # gone for good
            assert p.left_in(left - 1, client) is None
    joins = p.join_rounds()
    assert len(joins) == 3 and all(2 <= r <= 4 for r in joins.values())
    assert joins == plan(dropout_prob=0.2, late_fraction=0.3, late_round=4).join_rounds()


def test_straggler_delays():
    always = plan(straggler_prob=1.0, delay="constant", delay_mean=5.0)
    assert always.delay(3, 7) == 5.0
    assert plan(straggler_prob=0.0, delay_mean=5.0).delay(3, 7) == 0.0
    uniform = plan(straggler_prob=1.0, delay="uniform", delay_mean=5.0)
    delays = [uniform.delay(r, 0) for r in range(1, 2001)]
    assert 0 <= min(delays) and max(delays) <= 10.0 and abs(np.mean(delays) - 5.0) < 0.25


def test_attackers_are_a_seeded_share_of_the_clients():
    p = plan(attack_fraction=0.2)
    assert len(p.attackers()) == 2 and p.attackers() == plan(attack_fraction=0.2).attackers()
    assert set(p.attackers()) <= set(range(10))
    assert plan(attack_fraction=0.0).attackers() == []


def test_forgeries_by_hand():
    z = np.array([[1.0, 2.0, 0.0], [3.0, -1.0, 0.5]])
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(attack_array(z, "sign_flip", rng), -z)
    np.testing.assert_allclose(attack_array(z, "huge", rng), z * HUGE_SCALE)
    colluding = attack_array(z, "colluding", rng, push_class=2)
    np.testing.assert_allclose(colluding, z + [[0, 0, WRONG_MARGIN], [0, 0, WRONG_MARGIN]])
    wrong = attack_array(z, "wrong", rng)
    changed = wrong - z
    assert ((changed == WRONG_MARGIN).sum(axis=1) == 1).all() and ((changed == 0).sum(axis=1) == 2).all()
    assert (changed[[0, 1], z.argmax(axis=1)] == 0).all()  # never the row's own top class
    random = attack_array(z, "random", rng)
    assert random.shape == z.shape and not np.allclose(random, z)


def test_probability_forgeries_stay_distributions():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    for kind in ("wrong", "sign_flip", "random", "colluding"):
        out = attack_array(p, kind, np.random.default_rng(0), 1, probabilities=True)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    assert (attack_array(p, "colluding", np.random.default_rng(0), 1, probabilities=True).argmax(axis=1) == 1).all()


def tiny(rounds=2, timeout=600.0, **kw) -> RunSpec:
    faults = FaultSpec(**{k: v for k, v in kw.items() if k != "attack"})
    return RunSpec(
        world=WorldSpec(dataset="digits", num_clients=3, seed=0),
        rounds=rounds,
        epochs=1,
        round_timeout=timeout,
        faults=faults,
        attack=kw.get("attack", AttackSpec()),
    )


def rejections(out) -> list[tuple[int, str]]:
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "round"]
    return [(r["round"], x["reason"]) for r in rows for x in r["rejections"]]


FAULTY = {"crash_prob": 0.4, "late_fraction": 0.34, "late_round": 2, "attack": AttackSpec(0.34, "colluding")}


def expected_rejections(spec: RunSpec) -> list[tuple[int, int]]:
    """(round, client) of every message the plan stops, worked out from the plan itself."""
    p = FaultPlan(spec.faults, spec.attack, 0, 3)
    joins = p.join_rounds()
    return sorted((r, c) for r in range(1, spec.rounds + 1) for c in range(3) if joins.get(c, 1) > r or p.crashed(r, c))


def check_faulty_run(out, spec: RunSpec) -> dict:
    summary = json.loads((out / "summary.json").read_text())  # the run finished
    got = sorted((rnd, int(re.findall(r"client (\d+)", reason)[0])) for rnd, reason in rejections(out))
    assert got == expected_rejections(spec) and got  # every injected fault, and only those, rejected
    assert all("injected" in reason for _, reason in rejections(out))
    assert summary["attackers"] == FaultPlan(spec.faults, spec.attack, 0, 3).attackers() and summary["attackers"]
    honest = [r["acc"] for r in summary["per_client"] if not r["attacker"]]
    assert summary["acc_mean"] == pytest.approx(np.mean(honest))
    assert summary["faults"]["forged"] >= 1 and summary["faults"]["late_joiners"]
    return summary


def test_faults_and_attackers_on_the_batched_engine(tmp_path):
    # Execute: 3 clients, 2 rounds; a late joiner (round 2), crashes, one colluding attacker.
    spec = tiny(**FAULTY)
    run_batched(spec, build_strategy("peer", aggregator="median"), tmp_path, {"rule": "peer"}, device="cpu")
    # Assert
    summary = check_faulty_run(tmp_path, spec)
    assert summary["faults"]["delays"] == "simulated"


def test_silent_attackers_only_stop_teaching(tmp_path):
    # Execute: 3 clients, 2 rounds, one attacker that sends nothing (the bound a defence can reach)
    spec = tiny(attack=AttackSpec(0.34, "silent"))
    summary = run_batched(spec, build_strategy("peer"), tmp_path, {"rule": "peer"}, device="cpu")
    # Assert: its reply is rejected in each round, the others are accepted, and accuracy is the honest ones'
    attacker = summary["attackers"]
    assert len(attacker) == 1
    assert sorted(c for _, c in ((r, int(re.findall(r"client (\d+)", x)[0])) for r, x in rejections(tmp_path))) == [
        attacker[0],
        attacker[0],
    ]
    assert all("injected silent attacker" in reason for _, reason in rejections(tmp_path))
    assert summary["faults"]["silenced"] == 2 and summary["accepted_replies"] == 4


@pytest.mark.parametrize("codec", [Codec("int8"), Codec("topk", 2)])
def test_forgeries_travel_in_the_runs_codec(codec, tmp_path):
    # Execute: the same fleet with packed logits: an attacker's forgery must decode like an honest reply.
    spec = dataclasses.replace(tiny(**FAULTY), codec=codec)
    run_batched(spec, build_strategy("peer"), tmp_path, {"rule": "peer"}, device="cpu")
    # Assert: only the injected events are rejected (a forgery in the wrong packing would be too), and it was forged
    check_faulty_run(tmp_path, spec)


def test_faults_and_attackers_on_the_flower_engine(tmp_path):
    # Execute: the same fleet in Flower's simulation engine (nodes numbered at random).
    spec = tiny(**FAULTY)
    run_one(spec, build_strategy("peer"), tmp_path, {"rule": "peer"}, CPU)
    # Assert: the same injected events as on the batched engine (decided by seed, round, client).
    summary = check_faulty_run(tmp_path, spec)
    assert summary["faults"]["delays"] == "real"


def test_simulated_stragglers_later_than_the_timeout_lose_their_reply(tmp_path):
    # Every reply 5,000 s late, round timeout 3,000 s: every reply is lost, without waiting for it.
    spec = tiny(rounds=1, timeout=3000.0, straggler_prob=1.0, delay="constant", delay_mean=5000.0)
    summary = run_batched(spec, build_strategy("local"), tmp_path, {"rule": "local"}, device="cpu")
    reasons = [reason for _, reason in rejections(tmp_path)]
    assert len(reasons) == 3 and all(r.startswith("client error: timed out") for r in reasons)
    assert summary["faults"]["timed_out"] == 3 and summary["wall_s"] < 3000.0


def test_real_delays_hold_replies_back(tmp_path):
    # Every reply 0.5 s late, in wall-clock time, well within the timeout: all accepted, the round slower.
    spec = tiny(rounds=1, straggler_prob=1.0, delay="constant", delay_mean=0.5, delays="real")
    run_batched(spec, build_strategy("local"), tmp_path, {"rule": "local"}, device="cpu")
    row = next(r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["type"] == "round")
    assert row["replies"] == 3 and row["rejected"] == 0 and row["round_s"] >= 0.5


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["faults.crash_prob=2"], "faults.crash_prob"),
        (["attack.kind=polite"], "attack.kind"),
        (["strategy.aggregator=mode"], "strategy.aggregator"),
        (["strategy=fedavg", "attack.fraction=0.2"], "attack.fraction"),
    ],
)
def test_bad_fault_attack_and_defence_settings_are_one_line(args, field, tmp_path, capsys):
    from simulations.cli import main

    # Execute: refused before anything runs.
    code = main(["run", "data=digits", "rounds=1", f"out={tmp_path / 'run'}", *args])
    # Assert
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and field in err[0]
    assert not (tmp_path / "run").exists()


def test_a_round_that_samples_only_attackers_goes_on(tmp_path):
    from peerkd.hooks.participation import sample_clients

    # Prepare: 3 clients, client 1 attacks (0.34 × 3 rounds to 1), one client a round: round 1 samples client 1.
    spec = dataclasses.replace(tiny(rounds=1, attack=AttackSpec(0.34)), clients_per_round=1)
    assert plan(attack_fraction=0.34, clients=3).attackers() == [1] and sample_clients(3, 1, 0, 1).tolist() == [1]
    # Execute: its log line used to format a None accuracy and end the run.
    summary = run_batched(spec, build_strategy("local"), tmp_path, {"rule": "local"}, device="cpu")
    # Assert: a reply, no honest accuracy in the round; every client is evaluated at the end.
    row = next(r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["type"] == "round")
    assert row["replies"] == 1 and row["acc_mean"] is None and row["acc_mean_all"] is not None
    assert summary["acc_mean"] is not None


def test_round_line_without_an_honest_accuracy():
    from peerkd.round.record import round_line

    row = {"round": 1, "replies": 1, "rejected": 0, "missing": [], "round_s": 0.5, "acc_mean": None, "acc_worst": None}
    assert round_line(row) == "no honest accuracy (1 replies)  0.5 s"


def test_an_aggregator_aware_attacker_reads_the_target_it_was_sent(flower_identity):
    from flwr.app import ArrayRecord, Message, RecordDict

    from peerkd.hooks.faults import _sent_target
    from peerkd.wire import protocol as P
    from peerkd.wire.codec import decode_logits, encode_logits

    # Prepare: requests carrying an int8 target, none, and a peers' sum (peer_sum: not a consensus estimate)
    target = np.random.default_rng(0).normal(0, 3, (6, 4))
    packed = encode_logits(target, Codec("int8"))
    summed = ArrayRecord({**packed, P.ARRAY_PEERS: packed[P.ARRAY_LOGITS]})  # only the key matters here

    def request(content: dict) -> Message:
        return Message(RecordDict(content), dst_node_id=1, message_type=P.MSG_DISTILL)

    # Assert: decoded as the client decodes it; nothing when absent, a sum, or of another shape
    got = _sent_target(request({P.KEY_TARGETS: packed}), (6, 4), False)
    np.testing.assert_array_equal(got, decode_logits(packed, (6, 4)))
    assert _sent_target(request({}), (6, 4), False) is None
    assert _sent_target(request({P.KEY_TARGETS: summed}), (6, 4), False) is None
    assert _sent_target(request({P.KEY_TARGETS: packed}), (5, 4), False) is None


def test_inside_attackers_against_class_aware_on_the_batched_engine(tmp_path):
    # Execute: 3 clients, 3 rounds, one aggregator-aware attacker (honest in round 1: no target yet)
    spec = tiny(rounds=3, attack=AttackSpec(0.34, "inside"))
    summary = run_batched(
        spec, build_strategy("peer", aggregator="class_aware"), tmp_path, {"rule": "peer"}, device="cpu"
    )
    # Assert: its forgeries were accepted (in range: nothing to reject), and accuracy is the honest clients'
    assert summary["faults"]["forged"] >= 2 and summary["accepted_replies"] == 9 and rejections(tmp_path) == []
    honest = [r["acc"] for r in summary["per_client"] if not r["attacker"]]
    assert len(honest) == 2 and summary["acc_mean"] == pytest.approx(np.mean(honest))
