"""Simulated customers who react to the messages of a journey, for demos and realistic history.

`population` decides who reacts to which step, with what and after how long (seeded, so a
run can be repeated); `engagement` waits for the real message of that step and reports the
reaction through the real webhook API, as a provider or the tracking links would.
"""

from cascade.simulator.engagement import react, react_all
from cascade.simulator.population import ChannelPropensity, Population, Reaction, SimulatedCustomer

__all__ = ["ChannelPropensity", "Population", "Reaction", "SimulatedCustomer", "react", "react_all"]
