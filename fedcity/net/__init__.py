"""Networked federation: the coordinator server, the agency agent and the client.

:mod:`fedcity.net.messages` converts between the sans-IO core and the ``fedcity.v1`` wire
messages; the gRPC servers and clients are thin shells over :class:`~fedcity.learn.driver.JobDriver`
and :class:`~fedcity.core.nodes.AgencyNode`.
"""
