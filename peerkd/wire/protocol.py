"""The wire protocol between ServerApp and ClientApp, named once.

One message per node per round. ``train.distill`` carries the node's targets (teacher or
peer logits on the transfer set) and its reply carries fresh logits, so a round is one
round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Message types (Flower routes "<category>.<action>" to @app.<category>("<action>")).
MSG_TRAIN = "train"  # local CE epochs; weights in/out for fedavg
MSG_DISTILL = "train.distill"  # CE + KD toward targets; reply with logits on the transfer set
MSG_DIGEST = "train.digest"  # KD-only epochs on the transfer set, then CE epochs (DS-FL, FedMD)
MSG_CLASS_DISTILL = "train.fd"  # CE + KD toward per-class targets on private data (FD)
MSG_PROTO = "train.proto"  # CE + λ·distance to class prototypes; reply with class-mean embeddings (FedProto, FedTGP)
MSG_QUERY_LOGITS = "query.logits"  # logits on the transfer set only
MSG_EVALUATE = "evaluate"  # accuracy/loss of the student on the test split

# RecordDict keys.
KEY_CONFIG = "config"  # ConfigRecord: world spec, hyper-parameters, round
KEY_ARRAYS = "arrays"  # ArrayRecord: model weights (FedAvg's default key)
KEY_TARGETS = "targets"  # ArrayRecord: target logits for this node, shape (P, C)
KEY_LOGITS = "logits"  # ArrayRecord: the node's logits on the transfer set, shape (P, C)
KEY_METRICS = "metrics"  # MetricRecord: see METRIC_* below
KEY_PROBE = "probe-logits"  # ArrayRecord: logits on the server split's inputs (WML's weight learning)

# Array names inside the targets/logits ArrayRecords.
ARRAY_LOGITS = "logits"
ARRAY_MASK = "mask"  # (C,) 1 where a per-class target row is valid (FD)
ARRAY_COUNTS = "counts"  # (C,) label counts of the private shard (FD)
ARRAY_PEERS = "peers"  # (2,) [senders in the sum, 1 if this node is one of them] (peer_sum)

# Config keys sent by the server (besides the world spec, see peerkd.world.build.WorldSpec).
CFG_ROUND = "server-round"  # Flower's FedAvg injects this very key
CFG_STUDENTS = "students"  # comma-separated zoo names, assigned round-robin by partition id
CFG_EPOCHS = "epochs"
CFG_LR = "lr"
CFG_BATCH_SIZE = "batch-size"
CFG_ALPHA = "alpha"
CFG_TEMPERATURE = "temperature"
CFG_REPLY_LOGITS = "reply-logits"  # reply with logits on the transfer set
CFG_REPLY_PROBS = "reply-probs"  # ... as softmax probabilities instead (DS-FL)
CFG_REPLY_PROBE = "reply-probe"  # also reply with logits on the server split (WML)
CFG_DIGEST_EPOCHS = "digest-epochs"
CFG_CODEC = "codec"  # fp32 | fp16 | int8 | topk: how a client packs what it sends (peerkd.wire.codec)
CFG_CODEC_K = "codec-k"  # columns a topk encoding keeps per row
CFG_DP_CLIP = "dp-clip"  # L2 bound of each released row (centred logits); differential privacy
CFG_DP_NOISE = "dp-noise"  # noise multiplier z (0: no noise): std = z x the release's L2 sensitivity
CFG_DP_RELEASE = "dp-release"  # votes: release noisy one-hot votes of the top class instead of logits
CFG_DPSGD_EPSILON = "dpsgd-epsilon"  # example-level DP: the run's epsilon for DP-SGD on private data (0: off)
CFG_DP_DELTA = "dp-delta"  # ... its delta
CFG_DP_ROUNDS = "dp-rounds"  # ... and the rounds its steps are planned over (peerkd.student.dpsgd)
CFG_PROTO_DIM = "proto-dim"  # width of the shared prototype space (peerkd.student.prototypes)
CFG_KEEP_SENT = "keep-sent"  # remember the logits sent, to subtract them from a peers' sum (peer_sum)
CFG_WARM_UP = "warm-up"  # evaluate before round 1: also pay the training path's start-up (student.training.warm_up)
CFG_CHECKPOINT_DIR = "checkpoint-dir"  # simulation: where each client writes its student after training
CFG_RESUME_ROUND = "resume-round"  # ... and, resuming, the round of the server's checkpoint (load the student of it)

# Metric keys in replies.
METRIC_NUM_EXAMPLES = "num-examples"  # Flower's FedAvg weights by this key
METRIC_PARTITION = "partition-id"
METRIC_TEST_ACC = "test-acc"
METRIC_TEST_LOSS = "test-loss"
METRIC_TRAIN_LOSS = "train-loss"
METRIC_TRAIN_S = "train-s"
METRIC_DP_STEPS = "dp-steps"  # DP-SGD steps taken in this message's training (example-level DP)
METRIC_DP_NOISE = "dp-sgd-noise"  # ... their noise multiplier
METRIC_DP_RATE = "dp-rate"  # ... and sampling rate

# Node config keys (simulation sets the first two; deployments set them per SuperNode).
NODE_PARTITION_ID = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"
NODE_DATA_PATH = "data-path"
NODE_DATA_LABEL = "data-label"  # label column of a .csv data-path
NODE_STUDENT = "student"
KEY_INFO = "info"  # ConfigRecord: the reply's non-numeric facts (student architecture)
# The info record's entries: the student's architecture, and where it ran (inside Ray only).
INFO_ARCH, INFO_RAY_NODE, INFO_HOST, INFO_IP = "arch", "ray_node", "host", "ip"
INFO_PLACEMENT = (INFO_RAY_NODE, INFO_HOST, INFO_IP)


@dataclass(frozen=True)
class RoundParams:
    """A message's training settings, decoded once (the server writes them with the keys above).

    ``epochs``, ``lr`` and ``batch_size`` are always sent; the rest default to "off":
    no distillation weight, T = 1, no digest epochs, nothing extra in the reply.
    """

    round: int = 0
    students: tuple[str, ...] = ()
    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 32
    alpha: float = 0.0
    temperature: float = 1.0
    digest_epochs: int = 0
    reply_logits: bool = False
    reply_probs: bool = False
    reply_probe: bool = False
    codec: str = "fp32"
    codec_k: int = 3
    dp_clip: float = 1.0
    dp_noise: float = 0.0
    dp_release: str = "logits"
    dpsgd_epsilon: float = 0.0
    dp_delta: float = 1e-5
    dp_rounds: int = 0
    keep_sent: bool = False
    proto_dim: int = 0
    checkpoint_dir: str = ""  # "" : the student lives in context.state alone
    resume_round: int = 0  # a fresh context loads its student of this round from checkpoint_dir (0: none)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RoundParams:
        """Typed fields from a message's ConfigRecord (missing optional keys take the defaults)."""
        d = cls()
        get = config.get
        return cls(
            round=int(get(CFG_ROUND, d.round)),
            students=tuple(s for s in str(get(CFG_STUDENTS, "")).split(",") if s),
            epochs=int(config[CFG_EPOCHS]),
            lr=float(config[CFG_LR]),
            batch_size=int(config[CFG_BATCH_SIZE]),
            alpha=float(get(CFG_ALPHA, d.alpha)),
            temperature=float(get(CFG_TEMPERATURE, d.temperature)),
            digest_epochs=int(get(CFG_DIGEST_EPOCHS, d.digest_epochs)),
            reply_logits=bool(get(CFG_REPLY_LOGITS, False)),
            reply_probs=bool(get(CFG_REPLY_PROBS, False)),
            reply_probe=bool(get(CFG_REPLY_PROBE, False)),
            codec=str(get(CFG_CODEC, d.codec)),
            codec_k=int(get(CFG_CODEC_K, d.codec_k)),
            dp_clip=float(get(CFG_DP_CLIP, d.dp_clip)),
            dp_noise=float(get(CFG_DP_NOISE, d.dp_noise)),
            dp_release=str(get(CFG_DP_RELEASE, d.dp_release)),
            dpsgd_epsilon=float(get(CFG_DPSGD_EPSILON, d.dpsgd_epsilon)),
            dp_delta=float(get(CFG_DP_DELTA, d.dp_delta)),
            dp_rounds=int(get(CFG_DP_ROUNDS, d.dp_rounds)),
            keep_sent=bool(get(CFG_KEEP_SENT, False)),
            proto_dim=int(get(CFG_PROTO_DIM, d.proto_dim)),
            checkpoint_dir=str(get(CFG_CHECKPOINT_DIR, d.checkpoint_dir)),
            resume_round=int(get(CFG_RESUME_ROUND, d.resume_round)),
        )
