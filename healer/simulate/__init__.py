"""``healer simulate``: replay a recorded or built-in history of node events against a
configuration in virtual time, through healer's real decision code (the health tracker, the
planner and its guards, the breakers, the reboot arbiter and the remediation workflow), and say
what healer would have done, when and why (docs/simulate.md).

:mod:`.history` owns the history (JSONL files, a state database's recorded events, agents' reboot
wishes), :mod:`.catalogue` the built-in scenarios, :mod:`.world` the simulated cluster and cloud
the workflow acts on, :mod:`.engine` the run on a :class:`~healer.clock.VirtualClock`, and
:mod:`.report` the text, JSON and the diff of two runs.
"""
