"""ClientApp: a plain Flower Message-API client, plus fedcity's mod (the one-line change)."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcity.flower import fedcity_mod
from fedcity_flower_example.task import accuracy, load_partition, log_loss, train

app = ClientApp(mods=[fedcity_mod])  # a plain Flower app has ClientApp() here


def _data(context: Context) -> tuple:
    pid = int(context.node_config["partition-id"])
    n = int(context.node_config["num-partitions"])
    return load_partition(pid, n)


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    x, y = _data(context)
    model = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    new, loss = train(
        model,
        x,
        y,
        epochs=int(context.run_config["local-epochs"]),
        lr=float(context.run_config["learning-rate"]),
    )
    metrics = MetricRecord({"train-loss": loss, "num-examples": len(y)})
    return Message(
        RecordDict(
            {"arrays": ArrayRecord({k: Array(v) for k, v in new.items()}), "metrics": metrics}
        ),
        reply_to=msg,
    )


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    x, y = _data(context)
    model = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    metrics = MetricRecord(
        {
            "eval-loss": log_loss(model["coef"], model["intercept"], x, y),
            "eval-acc": accuracy(model, x, y),
            "num-examples": len(y),
        }
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
