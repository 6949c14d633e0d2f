"""Prints every reward of a segtune study, replayed from its first one, then live.
Usage: SEGTUNE_NATS=nats://127.0.0.1:4222 python3 subscribe_rewards.py STUDY
Needs: python3 -m pip install nats-py msgpack (schemas: docs/reward-stream.md)."""
import asyncio, os, sys

import msgpack, nats
from nats.js.api import DeliverPolicy


async def main(study):
    nc = await nats.connect(os.environ.get("SEGTUNE_NATS", "nats://127.0.0.1:4222"))
    sub = await nc.jetstream().subscribe(f"segtune.rewards.{study}", ordered_consumer=True,
                                         deliver_policy=DeliverPolicy.ALL)
    async for msg in sub.messages:
        r = msgpack.unpackb(msg.data)  # a dict: the Reward fields by name
        values = " ".join(f"{k}={v:.4g}" for k, v in r["strategy"]["values"].items())
        who = r.get("trainer") or "?"  # absent from rewards of an older evaluator
        print(f"#{r['index']} {r['job_id']} dice={r['mean']:.4f} trainer={who} {values}",
              flush=True)


asyncio.run(main(sys.argv[1]))
