"""peerkd: federated peer distillation on Flower — students exchange logits, not weights."""

from peerkd.env import set_memory_env, set_quiet_env

set_quiet_env()
set_memory_env()

__version__ = "0.1.0"
