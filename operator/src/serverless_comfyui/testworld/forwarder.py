"""`python -m serverless_comfyui.testworld.forwarder --netns PATH --port P [--port Q ...]
--to HOST:PORT`: a TCP forwarder from inside a real node's network namespace to the apiserver on
the host's loopback. It opens its listening sockets in the node's namespace (0.0.0.0:P, ...:
only our addresses exist there) and then returns to the host namespace, where it connects to
HOST:PORT (a loopback address) for every connection. So the kubelet reaches the apiserver as
https://127.0.0.1:P, and pods as https://10.96.0.1:443, the `kubernetes` Service's ClusterIP
that netns.py puts on the namespace's loopback (the world has no kube-proxy): addresses the
apiserver's certificate is valid for."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import socket

CLONE_NEWNET = 0x40000000


def setns(fd: int) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def listen_in(netns: str, port: int) -> socket.socket:
    """A listening socket on 0.0.0.0:port inside netns (this thread returns to its own netns)."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        setns(target)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", port))
            sock.listen(128)
            sock.setblocking(False)
        finally:
            setns(own)
    finally:
        os.close(own)
        os.close(target)
    return sock


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(socks: list[socket.socket], host: str, port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    servers = [await asyncio.start_server(handle, sock=sock) for sock in socks]
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--netns", required=True)
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--to", required=True, help="a loopback HOST:PORT on the host")
    args = parser.parse_args()
    host, _, port = args.to.rpartition(":")
    if not host.startswith("127."):
        raise SystemExit("the forwarder only connects to loopback addresses")
    socks = [listen_in(args.netns, listen) for listen in args.port]
    print(f"forwarding {args.netns} :{args.port} -> {args.to}", flush=True)
    asyncio.run(serve(socks, host, int(port)))


if __name__ == "__main__":
    main()
