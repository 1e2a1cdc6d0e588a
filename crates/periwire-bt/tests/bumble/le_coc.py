"""Two Bumble hosts on two periwire adapters: LE advertise, scan, connect, then move data
over an LE credit-based L2CAP channel both ways, checked byte for byte.

Usage: le_coc.py PERIPHERAL_TRANSPORT CENTRAL_TRANSPORT BYTES

Prints one marker line per step (FOUND, CONNECTED, CHANNEL, RECEIVED, THROUGHPUT, PASS);
the Rust test waits for PASS. Every wait is on a Bumble event, with a timeout.
"""

import asyncio
import hashlib
import sys
import time

from bumble import l2cap
from bumble.core import AdvertisingData
from bumble.device import Device
from bumble.hci import Address
from bumble.transport import open_transport

PSM = 0x0081
NAME = "pw-peripheral"
CHUNK = 2048
TIMEOUT = 60


def payload(size: int) -> bytes:
    """A deterministic pseudo-random payload (so a reordering or a dropped byte shows)."""
    out = bytearray()
    block = b"periwire"
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def say(*words) -> None:
    print(*words, flush=True)


def name_of(advertisement) -> str:
    name = advertisement.data.get(AdvertisingData.COMPLETE_LOCAL_NAME)
    if isinstance(name, bytes):
        return name.decode(errors="replace")
    return str(name) if name is not None else ""


async def main(peripheral_transport: str, central_transport: str, size: int) -> None:
    forward = payload(size)
    backward = payload(size // 4 + 1)[::-1]
    async with await open_transport(peripheral_transport) as (p_src, p_sink):
        async with await open_transport(central_transport) as (c_src, c_sink):
            peripheral = Device.with_hci(NAME, Address("F0:F1:F2:F3:F4:01"), p_src, p_sink)
            central = Device.with_hci("pw-central", Address("F0:F1:F2:F3:F4:02"), c_src, c_sink)
            await peripheral.power_on()
            await central.power_on()
            say("POWERED", peripheral.public_address, central.public_address)

            received = bytearray()
            got_all = asyncio.Event()
            echoed = bytearray()
            got_echo = asyncio.Event()

            def on_server_channel(channel) -> None:
                def sink(sdu: bytes) -> None:
                    received.extend(sdu)
                    if len(received) >= len(forward):
                        got_all.set()

                channel.sink = sink
                server_channel.set_result(channel)

            server_channel = asyncio.get_running_loop().create_future()
            peripheral_connection = asyncio.get_running_loop().create_future()
            peripheral.on(
                "connection",
                lambda c: peripheral_connection.done() or peripheral_connection.set_result(c),
            )
            peripheral.create_l2cap_server(
                spec=l2cap.LeCreditBasedChannelSpec(psm=PSM, mtu=CHUNK, mps=247, max_credits=64),
                handler=on_server_channel,
            )
            adv = AdvertisingData(
                [
                    (AdvertisingData.FLAGS, bytes([0x06])),
                    (AdvertisingData.COMPLETE_LOCAL_NAME, NAME.encode()),
                ]
            )
            await peripheral.start_advertising(advertising_data=bytes(adv))

            found = asyncio.get_running_loop().create_future()

            def on_advertisement(advertisement) -> None:
                if name_of(advertisement) == NAME and not found.done():
                    found.set_result(advertisement.address)

            central.on("advertisement", on_advertisement)
            await central.start_scanning()
            address = await asyncio.wait_for(found, TIMEOUT)
            say("FOUND", address)
            await central.stop_scanning()

            connection = await central.connect(address, timeout=TIMEOUT)
            say("CONNECTED", connection.handle)
            channel = await connection.create_l2cap_channel(
                spec=l2cap.LeCreditBasedChannelSpec(psm=PSM, mtu=CHUNK, mps=247, max_credits=64)
            )
            peer_channel = await asyncio.wait_for(server_channel, TIMEOUT)
            say("CHANNEL", channel.source_cid, channel.destination_cid)

            def on_echo(sdu: bytes) -> None:
                echoed.extend(sdu)
                if len(echoed) >= len(backward):
                    got_echo.set()

            channel.sink = on_echo

            start = time.perf_counter()
            for offset in range(0, len(forward), CHUNK):
                channel.write(forward[offset : offset + CHUNK])
            await asyncio.wait_for(got_all.wait(), TIMEOUT)
            elapsed = time.perf_counter() - start
            if bytes(received) != forward:
                raise SystemExit(f"FAIL forward data differs ({len(received)} bytes)")
            say("RECEIVED", len(received), hashlib.sha256(received).hexdigest())
            say(
                "THROUGHPUT",
                f"{len(forward) * 8 / elapsed / 1e6:.2f} Mbit/s",
                f"{len(forward)} bytes in {elapsed:.3f} s",
            )

            for offset in range(0, len(backward), CHUNK):
                peer_channel.write(backward[offset : offset + CHUNK])
            await asyncio.wait_for(got_echo.wait(), TIMEOUT)
            if bytes(echoed) != backward:
                raise SystemExit("FAIL backward data differs")
            say("ECHOED", len(echoed))

            disconnected = asyncio.get_running_loop().create_future()
            (await peripheral_connection).on(
                "disconnection", lambda *_: disconnected.done() or disconnected.set_result(True)
            )
            await connection.disconnect()
            await asyncio.wait_for(disconnected, TIMEOUT)
            say("PASS")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
