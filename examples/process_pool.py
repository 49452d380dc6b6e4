"""CPU-bound work in child processes, with soft and hard time limits.

uv run python examples/process_pool.py
"""

from __future__ import annotations

import asyncio

from stem import SoftTimeLimitExceeded, Stem

app = Stem.from_url("sqlite:///.stem/examples/process_pool.db")  # its own file


@app.task(name="math.primes", pool="process")
def count_primes(limit: int) -> int:
    sieve = bytearray([1]) * (limit + 1)
    sieve[0:2] = b"\x00\x00"
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(sieve[i * i :: i]))
    return sum(sieve)


@app.task(name="math.forever", pool="process", soft_time_limit=0.5, time_limit=2)
def forever() -> str:
    n = 0
    try:
        while True:
            n += 1
    except SoftTimeLimitExceeded:
        return "stopped politely at the soft limit"


async def main() -> None:
    async with app.worker(concurrency=2):
        primes = await app.wait_for_task(await count_primes.enqueue(200_000), timeout=60)
        print("primes below 200,000:", primes.value)
        print("long task:", (await app.wait_for_task(await forever.enqueue(), timeout=60)).value)
    await app.aclose()


if __name__ == "__main__":
    asyncio.run(main())
