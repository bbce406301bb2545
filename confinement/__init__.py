"""How the platform's containers are kept apart: from the host, from each other's teams,
and from the networks an operator has not opened to them.

Shared by the agent (instances and one-off tasks) and the stager (staging containers):

- :mod:`confinement.firewall` renders the packet-filter rules of one container network
  (a pure function) and installs them atomically with ``iptables-restore``;
- :mod:`confinement.networks` makes the Docker networks (one per team, one for staging),
  with inter-container traffic off, and puts those rules on their bridges.
"""
