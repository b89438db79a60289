"""The round: the contract a rule sees (``contract``), the loop (``loop``), the hook protocol
(``hook``), reply screening, results, checkpoints and the one engine entry point (``run``)."""
