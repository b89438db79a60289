"""Grid I/O (peerkd.wire.grid_io) on a real in-process grid: replies come back in send order
whatever order the grid returns them in; a reply's info and bytes are read as the protocol names them."""

from flwr.app import ConfigRecord, Message, RecordDict

from peerkd.batched import BatchedGrid
from peerkd.wire import protocol as P
from peerkd.wire.grid_io import evaluate_nodes, reply_info, send_and_receive, sender
from peerkd.world.build import WorldSpec


class ReversedPulls(BatchedGrid):
    """A batched grid whose pulls return replies last-sent first."""

    def pull_messages(self, message_ids):
        return list(super().pull_messages(message_ids))[::-1]


def evaluate_messages(grid, nodes):
    world = WorldSpec(dataset="digits", num_clients=3).to_config()
    training = {P.CFG_STUDENTS: "mlp32", P.CFG_EPOCHS: 1, P.CFG_LR: 1e-3, P.CFG_BATCH_SIZE: 32}
    config = ConfigRecord({**world, **training, P.CFG_CODEC: "fp32", P.CFG_CODEC_K: 3, P.CFG_ROUND: 0})
    return [Message(RecordDict({P.KEY_CONFIG: config}), dst_node_id=n, message_type=P.MSG_EVALUATE) for n in nodes]


def test_replies_come_back_in_send_order():
    # Prepare: three nodes, messages sent to them in the order 3rd, 1st, 2nd.
    grid = ReversedPulls(3, device="cpu")
    nodes = sorted(grid.get_node_ids())
    order = [nodes[2], nodes[0], nodes[1]]
    # Execute
    replies, sent = send_and_receive(grid, evaluate_messages(grid, order), timeout=60)
    # Assert: the replies' nodes follow the send order, each client once.
    assert [sender(r, sent) for r in replies] == order
    assert sorted(r.content[P.KEY_METRICS][P.METRIC_PARTITION] for r in replies) == [0, 1, 2]


def test_evaluate_nodes_reads_metrics_and_info():
    # Execute: one evaluate round trip to every node of a 3-node grid.
    grid = BatchedGrid(3, device="cpu")
    config = dict(evaluate_messages(grid, [0])[0].content[P.KEY_CONFIG])
    out = evaluate_nodes(grid, sorted(grid.get_node_ids()), config, timeout=60)
    # Assert: each node's client, its test accuracy in [0, 1], its student's arch (no Ray placement here).
    assert sorted(v[P.METRIC_PARTITION] for v in out.values()) == [0, 1, 2]
    assert all(0.0 <= v[P.METRIC_TEST_ACC] <= 1.0 and v["arch"] == "mlp32" for v in out.values())
    assert all(set(v) & set(P.INFO_PLACEMENT) == set() for v in out.values())


def test_reply_info_keeps_only_the_protocols_entries():
    # Prepare: an info record with the arch, a Ray placement and a key the protocol does not name.
    info = ConfigRecord({"arch": "cnn", "ray_node": "ab", "host": "h", "ip": "1.2.3.4", "evil": "x" * 10})
    reply = Message(RecordDict({P.KEY_INFO: info}), dst_node_id=1, message_type=P.MSG_EVALUATE)
    # Assert
    assert reply_info(reply) == {"arch": "cnn", "ray_node": "ab", "host": "h", "ip": "1.2.3.4"}
