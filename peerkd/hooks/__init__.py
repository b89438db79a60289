"""The round's extras, each a ``peerkd.round.hook.RoundHook``: privacy, faults and attacks,
participation, placement, text measures, peer agreement."""
