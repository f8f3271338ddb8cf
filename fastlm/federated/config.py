"""The [federated] config section and its checks; fastlm.train.config holds it as `federated`.

    [federated]
    clients = 100                # 0 (the default): not federated
    clients_per_round = 10       # sampled each round (0: every client)
    rounds = 50
    local_steps = 5              # client optimizer steps per round, each of train.global_batch_size windows
    algorithm = "fedprox"        # or "fedavg"
    mu = 0.01                    # FedProx's proximal weight
    partition = "dirichlet"      # "iid" | "dirichlet" (alpha: source skew) | "files" (a client per data file)
    alpha = 0.1
    secure_aggregation = true    # Bonawitz et al.: the server sees only masked updates and their sum
    client_state = "keep"        # each client's optimizer state kept across its rounds, or "reset"
    client_dp = {clip = 1.0, noise_multiplier = 1.0}   # user-level DP (DP-FedAvg)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

ALGORITHMS = ("fedavg", "fedprox")
PARTITIONS = ("iid", "dirichlet", "files")
CLIENT_STATES = ("keep", "reset")


@dataclass
class ClientDPSection:
    """User-level differential privacy (McMahan et al. 2018): every client's update is clipped to `clip`
    (L2 norm), the clipped updates are averaged with equal weights and Gaussian noise of standard deviation
    noise_multiplier * clip / clients_per_round is added to the average."""
    clip: float = 1.0
    noise_multiplier: float = 1.0
    delta: float | None = None           # default 1 / clients
    accountant: str = "rdp"              # or "prv" (fastlm.privacy.accounting)


@dataclass
class FederatedSection:
    clients: int = 0                     # how many clients; 0: not a federated run
    clients_per_round: int = 0           # clients sampled (without replacement) each round; 0: all of them
    rounds: int = 10
    local_steps: int = 1                 # each selected client's optimizer steps in a round
    algorithm: str = "fedavg"            # fedavg | fedprox
    mu: float = 0.01                     # fedprox: the weight of (mu / 2) * ||w - w_global||^2
    partition: str = "iid"               # iid | dirichlet | files
    alpha: float = 0.5                   # dirichlet concentration: small = each client sees few sources
    sources: int = 10                    # dirichlet over one data stream: its contiguous segments are the sources
    secure_aggregation: bool = False
    threshold: int = 0                   # secure aggregation's Shamir threshold; 0: a majority of the round's clients
    dropout: float = 0.0                 # simulated: the probability that a client drops after masking its update
    client_state: str = "reset"          # keep | reset (each client's optimizer state across its rounds)
    client_dp: ClientDPSection | None = None
    eval_every: int = 1                  # rounds between validations (and always after the last); 0: only the last

    @property
    def enabled(self) -> bool:
        return self.clients > 0

    def per_round(self) -> int:
        return self.clients_per_round or self.clients


def validate_federated(config) -> None:
    """One-line ConfigErrors for [federated], and for what it does not combine with."""
    from fastlm.train.errors import ConfigError  # here: fastlm.train's config imports this module
    from fastlm.train.toml_text import show

    f = config.federated
    if f.clients < 0:
        raise ConfigError(f"federated.clients = {show(f.clients)}: expected a positive integer (0: not federated)")
    if not f.enabled:
        return
    for key in ("rounds", "local_steps"):
        if getattr(f, key) < 1:
            raise ConfigError(f"federated.{key} = {show(getattr(f, key))}: expected a positive integer")
    if not 0 <= f.clients_per_round <= f.clients:
        raise ConfigError(f"federated.clients_per_round = {show(f.clients_per_round)}: expected 1 to federated.clients "
                          f"= {f.clients} (or 0: all of them)")
    choices = {"algorithm": ALGORITHMS, "partition": PARTITIONS, "client_state": CLIENT_STATES}
    for key, options in choices.items():
        if getattr(f, key) not in options:
            raise ConfigError(f"federated.{key} = {show(getattr(f, key))}: expected one of {', '.join(options)}")
    if not (f.mu >= 0 and math.isfinite(f.mu)):
        raise ConfigError(f"federated.mu = {show(f.mu)}: expected a number >= 0")
    if not (f.alpha > 0 and math.isfinite(f.alpha)):
        raise ConfigError(f"federated.alpha = {show(f.alpha)}: expected a positive number")
    if f.sources < 1:
        raise ConfigError(f"federated.sources = {show(f.sources)}: expected a positive integer")
    if not 0 <= f.dropout < 1:
        raise ConfigError(f"federated.dropout = {show(f.dropout)}: expected a probability in [0, 1)")
    if f.dropout and not f.secure_aggregation:
        raise ConfigError("federated.dropout: simulates clients dropping out of secure aggregation; "
                          "set federated.secure_aggregation = true too")
    if f.eval_every < 0:
        raise ConfigError(f"federated.eval_every = {show(f.eval_every)}: expected an integer >= 0")
    if f.secure_aggregation and not 0 <= f.threshold <= f.per_round():
        raise ConfigError(f"federated.threshold = {show(f.threshold)}: expected 1 to the {f.per_round()} clients of a "
                          f"round (or 0: a majority)")
    if f.secure_aggregation and f.per_round() < 2:
        raise ConfigError("federated.secure_aggregation = true needs at least 2 clients per round (a single "
                          "client's masked update would be its update)")
    _validate_client_dp(f.client_dp, f)
    _validate_combinations(config)


def _validate_client_dp(dp: ClientDPSection | None, f: FederatedSection) -> None:
    from fastlm.privacy.accounting import ACCOUNTANTS
    from fastlm.train.errors import ConfigError
    from fastlm.train.toml_text import show

    if dp is None:
        return
    if not (dp.clip > 0 and math.isfinite(dp.clip)):
        raise ConfigError(f"federated.client_dp.clip = {show(dp.clip)}: expected a positive number")
    if not (dp.noise_multiplier >= 0 and math.isfinite(dp.noise_multiplier)):
        raise ConfigError(f"federated.client_dp.noise_multiplier = {show(dp.noise_multiplier)}: expected a number >= 0")
    if dp.delta is not None and not 0 < dp.delta < 1:
        raise ConfigError(f"federated.client_dp.delta = {show(dp.delta)}: expected a number between 0 and 1")
    if dp.accountant not in ACCOUNTANTS:
        raise ConfigError(f"federated.client_dp.accountant = {show(dp.accountant)}: expected one of "
                          f"{', '.join(ACCOUNTANTS)}")
    if f.dropout:  # the noise is calibrated to the clients_per_round that report
        raise ConfigError("federated.client_dp does not combine with federated.dropout")


def _validate_combinations(config) -> None:
    from fastlm.train.errors import ConfigError
    from fastlm.train.toml_text import show

    m, p, t = config.model, config.parallel, config.train
    unsupported = {
        f"model.family = {show(m.family)} (federated training is for causal language models)":
            m.is_encoder or m.is_fitted or m.carries_state,
        "parallel.tp > 1": p.tp > 1,
        "parallel.pp > 1": p.pp > 1,
        "parallel.shard_optimizer = true": p.shard_optimizer,
        f"parallel.sync = \"{p.sync}\"": p.sync != "every_step",
        "parallel.dp_shares": p.dp_shares is not None,
        "privacy.dp_sgd = true (use federated.client_dp for user-level DP)": config.privacy.dp_sgd,
        "train.adversarial": t.adversarial != "none",
        "train.precision = \"fp16\"": t.precision == "fp16",
    }
    for what, hit in unsupported.items():
        if hit:
            raise ConfigError(f"federated training does not combine with {what}")
