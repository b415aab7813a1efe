# Holds N keep-alive connections open to a proxy on 127.0.0.1:18080 (as bench/whole-proxy.sh
# starts it) and sends one GET per connection per second for D seconds; prints the requests
# served and the errors. Watch the proxy's RSS meanwhile (grep VmRSS /proc/PID/status).
# usage: python3 bench/hold-connections.py 10000 15
import asyncio, sys, time
N, D, ADDR = int(sys.argv[1]), float(sys.argv[2]), ("127.0.0.1", 18080)
ok = err = 0
async def client(i):
    global ok, err
    try:
        r, w = await asyncio.open_connection(*ADDR)
    except Exception:
        err += 1; return
    await asyncio.sleep(i % 1000 / 1000)
    end = time.time() + D
    while time.time() < end:
        try:
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
            await r.readexactly(n)
            ok += 1
        except Exception as e:
            err += 1; break
        await asyncio.sleep(1)
    w.close()
async def main():
    await asyncio.gather(*(client(i) for i in range(N)))
    print(f"connections {N}: {ok} requests ok, {err} errors")
asyncio.run(main())
