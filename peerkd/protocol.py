"""The wire protocol between ServerApp and ClientApp, named once.

One message per node per round. ``train.distill`` carries the node's targets (teacher or
peer logits on the transfer set) and its reply carries fresh logits, so a round is one
round trip.
"""

# Message types (Flower routes "<category>.<action>" to @app.<category>("<action>")).
MSG_TRAIN = "train"  # local CE epochs; weights in/out for fedavg
MSG_DISTILL = "train.distill"  # CE + KD toward targets; reply with logits on the transfer set
MSG_DIGEST = "train.digest"  # KD-only epochs on the transfer set, then CE epochs (DS-FL, FedMD)
MSG_CLASS_DISTILL = "train.fd"  # CE + KD toward per-class targets on private data (FD)
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

# Config keys sent by the server (besides the world spec, see peerkd.world.WorldSpec).
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

# Metric keys in replies.
METRIC_NUM_EXAMPLES = "num-examples"  # Flower's FedAvg weights by this key
METRIC_PARTITION = "partition-id"
METRIC_TEST_ACC = "test-acc"
METRIC_TEST_LOSS = "test-loss"
METRIC_TRAIN_LOSS = "train-loss"
METRIC_TRAIN_S = "train-s"

# Node config keys (simulation sets the first two; deployments set them per SuperNode).
NODE_PARTITION_ID = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"
NODE_DATA_PATH = "data-path"
NODE_DATA_LABEL = "data-label"  # label column of a .csv data-path
NODE_STUDENT = "student"
KEY_INFO = "info"  # ConfigRecord: the reply's non-numeric facts (student architecture)
