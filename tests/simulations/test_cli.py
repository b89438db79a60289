"""The command line refuses bad input with one line naming the field, exit code 2."""

import pytest

from simulations.cli import main


@pytest.mark.parametrize(
    "args, expected",
    [
        (["run", "data=foo"], "data: unknown value 'foo' (allowed: digits, file, mnist1d, mnist5k, synth, synthtext)"),
        (
            ["run", "strategy=bogus"],
            "strategy: unknown value 'bogus' (allowed: dsfl, fd, fedavg, feddf, fedmd, local, oracle, peer, peer_sum, "
            "teacher, teacher_ensemble, wml)",
        ),
        (["run", "partition=zipf"], "partition: unknown value 'zipf' (allowed: dirichlet, iid, shard)"),
        (["run", "students=[mlp32,resnet]"], "students: unknown value 'resnet'"),
        (["run", "strategy.alpha=-1"], "strategy.alpha: -1.0 is out of range (allowed: [0, 100])"),
        (["run", "strategy.temperature=0"], "strategy.temperature: 0.0 is out of range (allowed: (0, 100])"),
        (["run", "rounds=abc"], "rounds: Value 'abc'"),
        (["run", "frobnicate=1"], "frobnicate: unknown setting"),
        (
            ["run", "data=digits", "partition=shard", "partition.classes_per_client=20"],
            "partition.classes_per_client: 20 is out of range",
        ),
        (["run", "data=digits", "num_clients=500"], "num_clients: 500 clients × partition.min_size 10"),
        (["run", "data=file", "data.path=/no/such.csv"], "data.path: no such file"),
        (["run", "data=digits", "strategy=fedavg", "students=[mlp32,mlp64]"], "students: fedavg averages weights"),
        (["run", "data=digits", "strategy=peer", "num_clients=1"], "num_clients: peer needs at least 2 clients"),
        (["compare", "rules=[local,nope]"], "strategy: unknown value 'nope'"),
        (["compare", "seeds=[]"], "seeds: needs at least one seed"),
        (["deploy"], "command: unknown value 'deploy'"),
        (["run", "data=digits", "codec=topk", "codec.k=0"], "codec.k: 0 is out of range (allowed: [1, inf))"),
        (["run", "data=digits", "privacy.epsilon=0.0001"], "privacy.epsilon: 0.0001 cannot be met over 20 releases"),
        (["run", "data=digits", "strategy=fedavg", "privacy.epsilon=8"], "privacy.epsilon: rule 'fedavg' sends more"),
    ],
)
def test_bad_input_is_one_clear_line(args, expected, capsys):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("peerkd: error: ")
    assert expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_malformed_csv_through_the_cli(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,0\n3,4\n")
    assert main(["run", "data=file", f"data.path={bad}"]) == 2
    assert "data.path:" in capsys.readouterr().err


def test_help_and_config_listing(capsys):
    assert main(["--help"]) == 0
    assert "peerkd compare" in capsys.readouterr().out
    assert main(["run", "--cfg", "job", "rounds=3"]) == 0
    out = capsys.readouterr().out
    assert "rounds: 3" in out and "temperature: 4.0" in out
