"""The sans-IO agent state machine: `handle(state, event, now) -> (state, commands)`.

`transitions.py` holds every transition in one table; `events.py` and `commands.py`
are its inputs and outputs; `state.py` is the state and the persisted journal;
`reasons.py` the FreeRTOS status reasons. Nothing here touches a clock, file or socket.
"""

from overair.agent.machine.state import Journal, Phase, Settings, State
from overair.agent.machine.transitions import handle

__all__ = ["Journal", "Phase", "Settings", "State", "handle"]
