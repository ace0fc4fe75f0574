"""ServerApp: Flower's FedAvg swapped for fedcity's SecureFedAvg (the other change)."""

from __future__ import annotations

import json

from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedcity.flower import SecureFedAvg
from fedcity_flower_example.task import initial_model

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    strategy = SecureFedAvg(  # a plain Flower app has FedAvg( here
        str(cfg["fedcity-public-key"]),
        max_weight=float(cfg["fedcity-max-weight"]),
        clip=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=3,
        min_evaluate_nodes=3,
        min_available_nodes=3,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({k: Array(v) for k, v in initial_model().items()}),
        num_rounds=int(cfg["num-server-rounds"]),
    )
    summary = {
        "rounds": [
            {
                "round": r.server_round,
                "released": r.released,
                "contributors": len(r.contributors),
                "decryptors": len(r.decryptors),
                "failed_decryptors": len(r.failed_decryptors),
                "upload_bytes": r.upload_bytes,
            }
            for r in strategy.rounds_
        ],
        "evaluate": {
            str(k): dict(v) for k, v in result.evaluate_metrics_clientapp.items()
        },
    }
    print("FEDCITY-SUMMARY " + json.dumps(summary), flush=True)
