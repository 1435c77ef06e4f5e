"""Embedded MQTT broker (amqtt) for machines without Mosquitto.

Run as `python -m citygate.embedded_broker PORT`.
"""

from __future__ import annotations

import asyncio
import sys


async def serve(port: int) -> None:
    """Run an anonymous MQTT 3.1.1 broker on 127.0.0.1:`port` until cancelled."""
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
                    "amqtt.plugins.sys.broker.BrokerSysPlugin": {"sys_interval": 0}},
    }
    broker = Broker(config)
    await broker.start()
    try:
        await asyncio.Event().wait()
    finally:
        await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
