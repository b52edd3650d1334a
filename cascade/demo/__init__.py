"""`make run`: the local stack (supervisor), six sample customers, a simulated reaction to
the demo journey for some of them (cascade.simulator), and a report of what happened."""
