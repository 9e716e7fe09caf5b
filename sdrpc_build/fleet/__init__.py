"""Several machines: a fleet of hosts reached over OpenSSH (``sdrpc up/down/status``).

``tunnels``: the client's ``ssh -N -L`` per host, supervised in the background by launch/.
"""

__all__: list[str] = []
