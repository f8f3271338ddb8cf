"""Federated training: clients train where their data lives, the server combines only their updates.

    fastlm train CONFIG          # with a [federated] section (fastlm.federated.config)

config.py: the [federated] section; partition.py: each client's data; client.py: a client's local
TrainStep steps; server.py: client sampling, weighting, user-level DP; aggregate.py: the sum, in the
clear or by secure aggregation (secure_agg.py); run.py: the round loop.
"""
from fastlm.federated.config import ClientDPSection, FederatedSection

__all__ = ["ClientDPSection", "FederatedSection"]
