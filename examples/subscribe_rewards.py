"""Prints every reward of a segtune study, replayed from its first one, then live; and every
confirmation of the study (`segtune study confirm`: its arms and paired differences).
Usage: SEGTUNE_NATS=nats://127.0.0.1:4222 python3 subscribe_rewards.py STUDY
A broker with users (compose.yaml's, deploy/nats.conf): SEGTUNE_NATS_USER=admin and
SEGTUNE_NATS_PASSWORD=... (or nats://user:password@host:port); replies then come to
_INBOX_<user>, the one inbox such a broker lets the user read (SEGTUNE_NATS_INBOX_PREFIX
overrides), as for the segtune CLI.
Needs: python3 -m pip install nats-py msgpack (schemas: docs/reward-stream.md)."""
import asyncio, os, sys
from urllib.parse import urlparse

import msgpack, nats
from nats.js.api import DeliverPolicy


async def main(study):
    url = os.environ.get("SEGTUNE_NATS", "nats://127.0.0.1:4222")
    user = os.environ.get("SEGTUNE_NATS_USER")
    opts = {"user": user, "password": os.environ.get("SEGTUNE_NATS_PASSWORD", "")} if user else {}
    user = user or urlparse(url.split(",")[0]).username
    inbox = os.environ.get("SEGTUNE_NATS_INBOX_PREFIX") or (user and f"_INBOX_{user}")
    nc = await nats.connect(url, **opts, **({"inbox_prefix": inbox} if inbox else {}))
    js = nc.jetstream()
    await asyncio.gather(rewards(js, study), confirmations(js, study))


async def rewards(js, study):
    sub = await js.subscribe(f"segtune.rewards.{study}", ordered_consumer=True,
                             deliver_policy=DeliverPolicy.ALL)
    async for msg in sub.messages:
        r = msgpack.unpackb(msg.data)  # a dict: the Reward fields by name
        values = " ".join(f"{k}={v:.4g}" for k, v in r["strategy"]["values"].items())
        who = r.get("trainer") or "?"  # absent from rewards of an older evaluator
        # A job the study's pruner stopped early: its Dice is the last intermediate one.
        pruned = f" pruned@epoch={r['epoch_reached']}" if r.get("pruned") else ""
        print(f"#{r['index']} {r['job_id']} dice={r['mean']:.4f}{pruned} trainer={who} {values}",
              flush=True)



async def confirmations(js, study):
    try:
        sub = await js.subscribe(f"segtune.confirmations.{study}", ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.ALL)
    except Exception as e:  # a broker provisioned by an older segtune has no CONFIRMATIONS
        print(f"no confirmations: {e}", file=sys.stderr, flush=True)
        return
    fmt = lambda v: "failed" if v is None else f"{v:.4f}"  # nil: that seed's job failed
    async for msg in sub.messages:
        c = msgpack.unpackb(msg.data)  # a dict: the Confirmation fields by name
        for a in c["arms"]:
            dice = " ".join(fmt(d) for d in a["dice"])
            print(f"confirm {c['run_id']} {a['name']} mean={fmt(a['mean'])} dice={dice}", flush=True)
        for p in c["comparisons"]:
            lo, hi = p["ci95"]
            print(f"confirm {c['run_id']} {p['arm']}-{p['baseline']} diff={p['mean']:+.4f} "
                  f"ci95=[{lo:+.4f}, {hi:+.4f}] seeds={len(p['diffs'])}", flush=True)


asyncio.run(main(sys.argv[1]))
