"""Flower apps and an in-process grid shared by the fedcity.flower tests.

``LocalGrid`` delivers each message to a ClientApp in this process, with one persistent
Context per node, and turns a raised exception into an error reply as Flower's runtimes do.
It is fast enough for unit tests; the simulation-engine tests run the same apps under Ray.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedcity.flower.protocol import CONFIG_KEY, STAGE_DECRYPT

SHAPES = {"w": ((6, 3), "float32"), "b": ((3,), "float64")}


def initial_arrays() -> ArrayRecord:
    return ArrayRecord(
        {
            name: Array(np.linspace(-0.3, 0.3, int(np.prod(shape))).reshape(shape).astype(dt))
            for name, (shape, dt) in SHAPES.items()
        }
    )


def weight_of(pid: int) -> int:
    return 10 * (pid + 1)


def local_step(arrays: ArrayRecord, pid: int, server_round: int) -> ArrayRecord:
    """A deterministic 'training' step: the update depends on the node and the round."""
    rng = np.random.default_rng(1000 * server_round + pid)
    out = {}
    for name in arrays:
        a = arrays[name].numpy()
        out[name] = Array((a + rng.uniform(-0.4, 0.4, a.shape)).astype(a.dtype))
    return ArrayRecord(out)


def make_client_app(mods: list[Any] | None = None) -> ClientApp:
    app = ClientApp(mods=mods or [])

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        pid = int(ctx.node_config["partition-id"])
        rnd = int(msg.content["config"]["server-round"])
        new = local_step(msg.content["arrays"], pid, rnd)
        metrics = MetricRecord({"num-examples": weight_of(pid), "train-loss": 0.1 * pid})
        return Message(RecordDict({"arrays": new, "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, ctx: Context) -> Message:
        pid = int(ctx.node_config["partition-id"])
        metrics = MetricRecord({"num-examples": weight_of(pid), "eval-loss": 1.0})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def fail_on_decrypt(partition_ids: set[int]) -> Callable[..., Message]:
    """A mod (outermost) making the given nodes drop between training and decryption."""

    def mod(msg: Message, ctx: Context, call_next: Callable[..., Message]) -> Message:
        cfg = msg.content.config_records.get(CONFIG_KEY)
        if (
            cfg is not None
            and cfg.get("stage") == STAGE_DECRYPT
            and int(ctx.node_config["partition-id"]) in partition_ids
        ):
            raise ConnectionError("node dropped out before decryption")
        return call_next(msg, ctx)

    return mod


def plain_fedavg(num_nodes: int, rounds: int) -> dict[str, np.ndarray]:
    """The sample-weighted FedAvg of local_step, computed directly (float64)."""
    model = {n: initial_arrays()[n].numpy().astype(np.float64) for n in SHAPES}
    for rnd in range(1, rounds + 1):
        record = ArrayRecord({n: Array(model[n].astype(SHAPES[n][1])) for n in SHAPES})
        weights = [weight_of(p) for p in range(num_nodes)]
        locals_ = [local_step(record, p, rnd) for p in range(num_nodes)]
        model = {
            n: record[n].numpy().astype(np.float64)
            + sum(
                w * (loc[n].numpy().astype(np.float64) - record[n].numpy().astype(np.float64))
                for w, loc in zip(weights, locals_, strict=True)
            )
            / sum(weights)
            for n in SHAPES
        }
    return model


class LocalGrid(Grid):
    """Deliver messages to ClientApps in this process; ``silent`` nodes never answer."""

    def __init__(self, app: ClientApp, num_nodes: int) -> None:
        # what Flower's runtimes set in the ServerApp process before messages are built
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = 1
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self.app = app
        self.contexts = {
            100 + p: Context(
                run_id=1,
                node_id=100 + p,
                node_config={"partition-id": p, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for p in range(num_nodes)
        }
        self.silent_on_decrypt: set[int] = set()
        self.sent: list[Message] = []
        self.received: list[Message] = []

    def set_run(self, run: Any) -> None:  # pragma: no cover - not used
        raise NotImplementedError

    @property
    def run(self) -> Any:  # pragma: no cover - not used
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.sent.append(msg)
            nid = msg.metadata.dst_node_id
            cfg = msg.content.config_records.get(CONFIG_KEY)
            if (
                nid in self.silent_on_decrypt
                and cfg is not None
                and cfg.get("stage") == STAGE_DECRYPT
            ):
                continue
            try:
                reply = self.app(msg, self.contexts[nid])
            except Exception as exc:  # as Flower's runtimes: an error reply
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.received.append(reply)
            replies.append(reply)
        return replies


def node_id_of(partition_id: int) -> int:
    return 100 + partition_id
