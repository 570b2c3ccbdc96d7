"""threezone: run an autonomous AI agent as three isolated zones.

The executor (zone 1) holds credentials and network and acts only as its policy
allows; the planner (zone 2) and the readers (zone 3) have neither.
"""

__version__ = "0.1.0"
