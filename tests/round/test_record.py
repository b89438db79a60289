"""The rows and the summary a run writes (peerkd.round.record), with values worked out by hand."""

from collections import Counter

from peerkd.round.record import by_arch, client_row, per_client, round_row, run_summary


def test_round_row_counts_rejected_uploads_and_silent_nodes():
    # Prepare: two accepted clients (acc 0.5 and 0.7), one rejection of 40 B; node 9 got 30 B and said nothing.
    rows = [{"acc": 0.5, "bytes_up": 100, "bytes_measure": 10}, {"acc": 0.7, "bytes_up": 200, "bytes_measure": 0}]
    rejected = [{"node_id": 8, "reason": "bad", "bytes_up": 40}]
    down = {1: 50, 2: 50, 8: 50, 9: 30}
    # Execute
    row = round_row(3, rows, rejected, down, answered={1, 2, 8})
    # Assert: 300 + 40 up, 180 down, worst 0.5, node 9 missing.
    assert (row["round"], row["replies"], row["rejected"], row["missing"]) == (3, 2, 1, [9])
    assert (row["bytes_up"], row["bytes_down"], row["bytes_measure"]) == (340, 180, 10)
    assert abs(row["acc_mean"] - 0.6) < 1e-12 and row["acc_worst"] == 0.5 and not row["no_reply_accepted"]


def test_client_row_and_summary_from_the_last_rows():
    # Prepare: client 1's row of round 2 (cnn, with a Ray placement), client 0's of round 1 (mlp).
    values = {"partition-id": 1, "train-loss": 0.3, "num-examples": 64}
    info = {"arch": "cnn", "ray_node": "ab", "host": "h"}
    row1 = client_row(2, 7, values, info, (0.8, 0.4), (100, 50, 0))
    row0 = {"client": 0, "arch": "mlp", "acc": 0.6, "loss": 0.9, "round": 1}
    run = {"strategy": "peer", "dataset": "digits", "num_clients": 2, "rounds": 2, "seed": 0,
           "students": ["mlp", "cnn"], "student_params": {"cnn": 200, "mlp": 100}, "private": True,
           "clients_per_round": 2}  # fmt: skip
    totals = Counter(bytes_up=300, bytes_down=200, bytes_measure=0, rejected=1, replies=3)
    # Execute
    clients = per_client({1: row1, 0: row0})
    summary = run_summary(run, clients, totals, {"teacher_acc": None, "dp_noise": 1.5})
    # Assert: the row reads its metrics and placement; the summary sorts clients and groups by arch.
    assert (row1["client"], row1["node_id"], row1["acc"], row1["train_loss"], row1["ray_node"]) == (
        1,
        7,
        0.8,
        0.3,
        "ab",
    )
    assert [c["client"] for c in clients] == [0, 1] and clients[1] == {
        "client": 1, "arch": "cnn", "acc": 0.8, "loss": 0.4, "round": 2,
    }  # fmt: skip
    assert summary["acc_worst"] == 0.6 and abs(summary["acc_mean"] - 0.7) < 1e-12
    assert summary["accepted_replies"] == 3 and summary["rejected_replies"] == 1 and summary["dp_noise"] == 1.5
    assert by_arch(clients) == {
        "cnn": {"acc_mean": 0.8, "acc_worst": 0.8, "acc_std": 0.0, "loss_mean": 0.4, "clients": 1},
        "mlp": {"acc_mean": 0.6, "acc_worst": 0.6, "acc_std": 0.0, "loss_mean": 0.9, "clients": 1},
    }
    assert summary["student_params"] == {"cnn": 200, "mlp": 100}
