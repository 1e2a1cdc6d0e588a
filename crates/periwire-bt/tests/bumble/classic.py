"""Two Bumble hosts on two periwire adapters over BR/EDR: inquiry, remote name, connection,
Secure Simple Pairing (link keys), encryption, then data both ways over an L2CAP channel,
checked byte for byte.

Usage: classic.py TRANSPORT_A TRANSPORT_B BYTES

Prints one marker line per step; the Rust test checks them. Every wait is on a Bumble event,
with a timeout.
"""

import asyncio
import hashlib
import sys

from bumble import l2cap
from bumble.core import PhysicalTransport
from bumble.device import Device, DeviceConfiguration
from bumble.hci import Address
from bumble.transport import open_transport

PSM = 0x1001
TIMEOUT = 60


def say(*words) -> None:
    print(*words, flush=True)


def payload(size: int, seed: bytes) -> bytes:
    out = bytearray()
    block = seed
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def device(name: str, address: str, source, sink) -> Device:
    config = DeviceConfiguration(name=name, address=Address(address), classic_enabled=True)
    return Device.from_config_with_hci(config, source, sink)


async def main(transport_a: str, transport_b: str, size: int) -> None:
    forward = payload(size, b"a to b")
    backward = payload(size // 2 + 3, b"b to a")
    async with await open_transport(transport_a) as (a_src, a_sink):
        async with await open_transport(transport_b) as (b_src, b_sink):
            a = device("pw-classic-a", "F0:F1:F2:F3:F4:0A", a_src, a_sink)
            b = device("pw-classic-b", "F0:F1:F2:F3:F4:0B", b_src, b_sink)
            await a.power_on()
            await b.power_on()
            await b.set_discoverable(True)
            await b.set_connectable(True)
            say("POWERED", a.public_address, b.public_address)

            loop = asyncio.get_running_loop()
            found = loop.create_future()

            def on_inquiry_result(address, class_of_device, data, rssi) -> None:
                if address == b.public_address and not found.done():
                    found.set_result(address)

            a.on("inquiry_result", on_inquiry_result)
            await a.start_discovery()
            address = await asyncio.wait_for(found, TIMEOUT)
            await a.stop_discovery()
            say("FOUND", address)

            name = await asyncio.wait_for(a.request_remote_name(address), TIMEOUT)
            say("NAME", name)

            received = bytearray()
            got_all = asyncio.Event()
            server_channel = loop.create_future()

            def on_server_channel(channel) -> None:
                def sink(sdu: bytes) -> None:
                    received.extend(sdu)
                    if len(received) >= len(forward):
                        got_all.set()

                channel.sink = sink
                if not server_channel.done():
                    server_channel.set_result(channel)

            b.create_l2cap_server(
                spec=l2cap.ClassicChannelSpec(psm=PSM, mtu=1017), handler=on_server_channel
            )

            connection = await a.connect(
                address, transport=PhysicalTransport.BR_EDR, timeout=TIMEOUT
            )
            say("CONNECTED", connection.handle)

            await asyncio.wait_for(connection.authenticate(), TIMEOUT)
            say("AUTHENTICATED")
            await asyncio.wait_for(connection.encrypt(), TIMEOUT)
            say("ENCRYPTED", connection.is_encrypted)

            keys_a = await a.keystore.get(str(b.public_address)) if a.keystore else None
            keys_b = await b.keystore.get(str(a.public_address)) if b.keystore else None
            if keys_a is None or keys_b is None:
                raise SystemExit(f"FAIL link keys not stored: {keys_a} {keys_b}")
            key_a = keys_a.link_key.value
            key_b = keys_b.link_key.value
            if key_a != key_b:
                raise SystemExit("FAIL link keys differ")
            say("LINK_KEY", key_a.hex())

            channel = await connection.create_l2cap_channel(
                spec=l2cap.ClassicChannelSpec(psm=PSM, mtu=1017)
            )
            peer_channel = await asyncio.wait_for(server_channel, TIMEOUT)
            say("CHANNEL", channel.source_cid, channel.destination_cid)

            echoed = bytearray()
            got_echo = asyncio.Event()

            def on_echo(sdu: bytes) -> None:
                echoed.extend(sdu)
                if len(echoed) >= len(backward):
                    got_echo.set()

            channel.sink = on_echo
            for offset in range(0, len(forward), 1000):
                channel.send_pdu(forward[offset : offset + 1000])
            await asyncio.wait_for(got_all.wait(), TIMEOUT)
            if bytes(received) != forward:
                raise SystemExit(f"FAIL forward data differs ({len(received)} bytes)")
            say("RECEIVED", len(received))
            for offset in range(0, len(backward), 1000):
                peer_channel.send_pdu(backward[offset : offset + 1000])
            await asyncio.wait_for(got_echo.wait(), TIMEOUT)
            if bytes(echoed) != backward:
                raise SystemExit("FAIL backward data differs")
            say("ECHOED", len(echoed))

            await connection.disconnect()
            say("PASS")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
