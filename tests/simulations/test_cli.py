"""The command line refuses bad input with one line naming the field, exit code 2."""

import pytest

from simulations.cli import main


@pytest.mark.parametrize(
    "args, expected",
    [
        (["run", "data=foo"], "data: unknown value 'foo' (allowed: digits, file, mnist1d, mnist5k, synth, synthtext)"),
        (
            ["run", "strategy=bogus"],
            "strategy: unknown value 'bogus' (allowed: dsfl, fd, fedavg, feddf, fedmd, fedproto, fedtgp, local, "
            "oracle, peer, peer_sum, teacher, teacher_ensemble, teacher_pool, wml)",
        ),
        (["run", "partition=zipf"], "partition: unknown value 'zipf' (allowed: dirichlet, iid, shard)"),
        (["run", "students=[mlp32,resnet]"], "students: unknown value 'resnet'"),
        (["run", "strategy.alpha=-1"], "strategy.alpha: -1.0 is out of range (allowed: [0, 100])"),
        (["run", "strategy.temperature=-1"], "strategy.temperature: -1.0 is out of range (allowed: [0, 100])"),
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
        # Keys and values Hydra took silently:
        (["run", "+foo=1"], "foo: not a setting (added with +, nothing would read it) (allowed: the keys --cfg job"),
        (["run", "+foo=1", "+data.bar=2"], "data.bar, foo: not settings (added with +"),
        (["compare", "+strategy.nope=1"], "strategy.nope: not a setting"),
        (["run", "measure_agreement=2"], "measure_agreement: 2 is not a boolean (allowed: true, false)"),
        (["run", "data.standardize=yes"], "data.standardize: 'yes' is not a boolean (allowed: true, false)"),
        (["sweep", "num_clients=2,4", "num_clients=8"], "num_clients: given both as a sweep (a,b,... or in grid=) and"),
        (["sweep", "grid=['num_clients=2,4']", "num_clients=8"], "num_clients: given both as a sweep"),
        (["sweep", "experiment=scarcity", "resume=2"], "resume: 2 is not a boolean"),
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
    assert "rounds: 3" in out and "temperature: 0.0" in out


def test_an_experiments_axis_may_still_be_fixed_on_the_command_line(capsys):
    # scarcity sweeps partition.samples_per_client; one value on the command line fixes it (not a sweep given twice).
    assert main(["sweep", "experiment=scarcity", "partition.samples_per_client=25", "--cfg", "job"]) == 0
    out = capsys.readouterr().out
    assert "samples_per_client" not in out.split("# grid axes after the command line:")[1].splitlines()[0]
