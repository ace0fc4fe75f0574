"""ServerApp: Flower's FedAvg swapped for fedcity's SecureFedAvg (the other change)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, Context, Message
from flwr.common.serde import message_to_proto
from flwr.serverapp import Grid, ServerApp

from fedcity.flower import SecureFedAvg
from fedcity_flower_example.task import initial_model

app = ServerApp()


class RecordingSecureFedAvg(SecureFedAvg):
    """SecureFedAvg that also writes every train reply it receives, serialized, to a folder.

    With ``fedcity-record-dir`` set, the files show exactly what reached the ServerApp through
    the SuperLink: ciphertexts, key ids and share indices (tests/flower scans them).
    """

    def __init__(self, record_dir: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.record_dir = Path(record_dir) if record_dir else None

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
        replies = list(replies)
        if self.record_dir is not None:
            self.record_dir.mkdir(parents=True, exist_ok=True)
            for i, msg in enumerate(replies):
                path = self.record_dir / f"round{server_round}-reply{i}.bin"
                path.write_bytes(message_to_proto(msg).SerializeToString())
        return super().aggregate_train(server_round, replies)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    strategy = RecordingSecureFedAvg(  # a plain Flower app has FedAvg( here
        str(cfg["fedcity-record-dir"]),
        str(cfg["fedcity-public-key"]),
        max_weight=float(cfg["fedcity-max-weight"]),
        clip=1.0,
        signed=True,  # every update signed; committee members check the sum is their product
        train_metrics=["train-loss"],  # released as a sample-weighted average only
        metric_bound=10.0,
        fraction_evaluate=float(cfg["fraction-evaluate"]),
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
        "model": {k: result.arrays[k].numpy().tolist() for k in result.arrays},
        "train": {str(k): dict(v) for k, v in result.train_metrics_clientapp.items()},
        "evaluate": {str(k): dict(v) for k, v in result.evaluate_metrics_clientapp.items()},
    }
    print("FEDCITY-SUMMARY " + json.dumps(summary), flush=True)
