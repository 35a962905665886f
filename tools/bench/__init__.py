"""Measure the chat service under load, side by side: `make bench`.

It starts live servers of the final step (harness.server.start_server, on free
loopback ports) with 1, 2, 4, 8 and the shipped number of dirty workers, set
through DIRTY_WORKERS, and drives each with concurrent chat streams from one
asyncio client. It prints a table and writes docs/generated/bench/: table.md,
results.json, ttft_by_workers.png and burst.png.

Scenarios, every chat with the same prompt so that durations compare:

- solo: one chat on an idle server (the yardstick for durations);
- together: 32 chats started at once, while a separate process polls /health;
- sweep (shipped config): 8 and 16 chats at once, and 64 while /health is polled;
- burst: 4x as many chats as dirty workers, each outcome classified;
- drop (1 dirty worker): first token of the next chat after a hang-up;
- sockets (shipped config): 1,000 chats, half dropped mid-stream, then the
  server's socket count must come back to its idle value;
- loop: the shipped config again, its HTTP worker on asyncio's event loop
  instead of the step's asgi_loop, for the together and 64-stream figures;
- mixed: a room's real mix of prompts, arriving at random (Poisson, seeded) at
  50 % and 80 % of capacity, at most MIXED_ADMITTED chats in flight (the rest
  wait in the client), against 1x, 1.25x, 1.5x and 2x as many dirty workers.
  Its servers run tools/bench_conf.py, which logs which dirty worker served
  each chat and when: a chat that queued behind a busy worker while another
  was idle is a collision. The same arrivals replayed through an ideal
  least-busy queue, with the measured answer times, are the yardstick.

The shipped config's scenarios (and its asyncio twin's) run REPEAT times and
report medians: on 2 cores, the p95 of 32 first tokens and the p99 of a few
hundred /health probes change a lot from one run to the next, and the median
of five is steadier. The other configs run once. Settings come from the
environment (or the same options on the command line): REPEAT=9 (default 5),
BENCH_QUICK=1 (a one-minute smoke run), BENCH_STEP=04 (another step, or any
folder), BENCH_OUT=dir (instead of docs/generated/bench), BENCH_CLIENT=httpx
(to compare with the default client). `--scenarios mixed --merge` runs only
the mixed scenario and puts its figures into the results.json already there.

`python -m tools.bench` runs it (__main__.py). The parts, by job: options
(settings, targets, the step), clients (the chat clients and the probes),
scenarios, runner (a server per configuration, its scenarios, the targets
judged), report (table.md and the charts) and stats.
"""
