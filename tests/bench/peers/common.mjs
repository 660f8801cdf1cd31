// Shared helpers for the peer benchmarks (pg-boss, graphile-worker): configuration from the
// environment, timing, the open-loop latency driver, the transactional enqueue driver, the
// result line, and dropping the per-process schema on every exit path.
import { performance } from 'node:perf_hooks';
import pg from 'pg';

function intEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} must be a positive number, got '${raw}'`);
  return value;
}

export const config = {
  url: process.env.OMNIBUS_DATABASE_URL,
  events: intEnv('PEERS_EVENTS', 100_000),
  latencyRate: intEnv('PEERS_LATENCY_RATE', 1_000), // jobs per second, open loop
  latencySeconds: intEnv('PEERS_LATENCY_SECONDS', 5),
  latencyDeadlineSeconds: intEnv('PEERS_LATENCY_DEADLINE_S', 30), // after the last send
  txTotal: intEnv('PEERS_TX', 10_000),
  txClients: intEnv('PEERS_TX_CLIENTS', 4),
  drainDeadlineSeconds: intEnv('PEERS_DRAIN_DEADLINE_S', 600),
  // After this long, a drain whose projected finish lies past the deadline is stopped and
  // its rate is reported from the jobs completed so far (pg-boss at its defaults).
  drainStallSeconds: intEnv('PEERS_DRAIN_STALL_S', 30),
  settings: (process.env.PEERS_SETTINGS || 'defaults,best').split(',').map((s) => s.trim()).filter(Boolean),
  // JSON merged over the 'best' settings, for trying alternatives without editing the code.
  bestOverride: process.env.PEERS_BEST ? JSON.parse(process.env.PEERS_BEST) : {},
};

if (!config.url) {
  console.error('peers: OMNIBUS_DATABASE_URL is not set (scripts/servers start prints it)');
  process.exit(2);
}

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across the process. */
export const now = () => performance.timeOrigin + performance.now();
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
export const log = (...args) => console.error('peers:', ...args);

/** Runs `fn` over `items` with at most `width` calls in flight. */
export async function inParallel(items, width, fn) {
  let next = 0;
  const lanes = Array.from({ length: Math.min(width, items.length) }, async () => {
    while (next < items.length) {
      const index = next++;
      await fn(items[index], index);
    }
  });
  await Promise.all(lanes);
}

export function chunks(total, size) {
  const out = [];
  for (let start = 0; start < total; start += size) out.push([start, Math.min(total, start + size)]);
  return out;
}

/**
 * Polls `progress()` (a number of completed jobs) until it reaches `target`. Returns the
 * elapsed milliseconds and whether it finished. Gives up at the deadline, or early once
 * the projected finish lies past the deadline (a queue that polls every few seconds).
 */
export async function waitForCount(progress, target, startedAt, { deadlineS, stallS, pollMs = 5 }) {
  for (;;) {
    const done = await progress();
    const elapsed = now() - startedAt;
    if (done >= target) return { finished: true, done, elapsed };
    const projected = done > 0 ? (elapsed * target) / done : Infinity;
    if (elapsed > deadlineS * 1000 || (elapsed > stallS * 1000 && projected > deadlineS * 1000)) {
      return { finished: false, done, elapsed };
    }
    await sleep(pollMs);
  }
}

/** Waits until `check()` resolves true, polling every `pollMs`; throws after `deadlineMs`. */
export async function waitUntil(what, check, deadlineMs, pollMs = 10) {
  const until = now() + deadlineMs;
  while (!(await check())) {
    if (now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(pollMs);
  }
}

export function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length) - 1;
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank))];
}

/**
 * End-to-end latency: sends `rate` jobs a second for `seconds`, open loop (a send is never
 * held back by a slow earlier one), each carrying its send time; `received` is the array the
 * handler pushes `now() - sent` into. Jobs not delivered within the deadline count as
 * infinitely late, so a queue that cannot keep up reports p99=inf rather than a flattering
 * figure over the jobs that made it.
 */
export async function measureLatency(send, received) {
  const total = Math.round(config.latencyRate * config.latencySeconds);
  const pending = [];
  const startedAt = now();
  let sent = 0;
  while (sent < total) {
    const due = Math.min(total, Math.floor(((now() - startedAt) * config.latencyRate) / 1000) + 1);
    while (sent < due) {
      const index = sent++;
      const promise = send({ i: index, sent: now() });
      promise.catch(() => {}); // reported by Promise.all below, not as an unhandled rejection
      pending.push(promise);
    }
    await sleep(1);
  }
  await Promise.all(pending);
  const deadline = now() + config.latencyDeadlineSeconds * 1000;
  while (received.length < total && now() < deadline) await sleep(10);
  const samples = received.slice().sort((a, b) => a - b);
  while (samples.length < total) samples.push(Infinity);
  if (received.length < total) log(`latency: ${received.length} of ${total} delivered within ${config.latencyDeadlineSeconds} s of the last send`);
  return percentile(samples, 99);
}

/**
 * The shape every Omnibus user has: BEGIN; INSERT INTO <schema>.business; enqueue one job in
 * the same transaction; COMMIT — from `txClients` connections, `txTotal` transactions in all.
 * `enqueue(client, i)` enqueues through the given client. Returns transactions per second.
 */
export async function measureTxEnqueue(schema, enqueue) {
  const clients = [];
  try {
    for (let c = 0; c < config.txClients; c++) {
      const client = new pg.Client({ connectionString: config.url });
      await client.connect();
      clients.push(client);
    }
    let next = 0;
    const startedAt = now();
    await Promise.all(clients.map(async (client) => {
      while (next < config.txTotal) {
        const i = next++;
        await client.query('BEGIN');
        try {
          await client.query({ name: 'business', text: `INSERT INTO ${schema}.business (ref, note) VALUES ($1, $2)`, values: [i, 'order placed'] });
          await enqueue(client, i);
          await client.query('COMMIT');
        } catch (err) {
          await client.query('ROLLBACK').catch(() => {});
          throw err;
        }
      }
    }));
    const elapsed = now() - startedAt;
    const { rows } = await clients[0].query(`SELECT count(*)::int AS n FROM ${schema}.business`);
    if (rows[0].n !== config.txTotal) throw new Error(`business rows: ${rows[0].n}, expected ${config.txTotal}`);
    return (config.txTotal * 1000) / elapsed;
  } finally {
    await Promise.all(clients.map((client) => client.end().catch(() => {})));
  }
}

export const businessTable = (schema) =>
  `CREATE TABLE ${schema}.business (id bigserial PRIMARY KEY, ref bigint NOT NULL, note text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`;

const fmt = (x) => (Number.isFinite(x) ? x.toFixed(x >= 100 ? 1 : 3) : 'inf');

export function printLine({ system, setting, version, enqueue, drain, p99, tx }) {
  process.stdout.write(
    `peer: system=${system} setting=${setting} version=${version} enqueue_per_s=${fmt(enqueue)} ` +
      `drain_per_s=${fmt(drain)} p99_ms=${fmt(p99)} tx_enqueue_per_s=${fmt(tx)}\n`,
  );
}

/** A connected client of its own (the caller ends it). */
export async function connect() {
  const client = new pg.Client({ connectionString: config.url });
  await client.connect();
  return client;
}

/** Runs a SQL statement on a short-lived connection of its own. */
export async function adminQuery(text, values) {
  const client = new pg.Client({ connectionString: config.url });
  await client.connect();
  try {
    await client.query("SET lock_timeout = '20s'");
    return await client.query(text, values);
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * Runs `main(schema)` with a schema of its own (named with the pid), dropping it at the end,
 * on failure and on SIGINT/SIGTERM; `stopAll()` stops the library first so no lock holds the
 * drop up. Exits non-zero on failure.
 */
export async function runWithSchema(prefix, main, stopAll) {
  const schema = `${prefix}_${process.pid}`;
  const drop = async () => {
    try {
      await stopAll();
    } catch (err) {
      log(`stopping ${prefix}: ${err.message}`);
    }
    await adminQuery(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  };
  let exiting = false;
  const onSignal = (signal) => {
    if (exiting) return;
    exiting = true;
    log(`${signal}: dropping schema ${schema}`);
    drop().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('unhandledRejection', (err) => {
    if (exiting) return;
    exiting = true;
    console.error(`peers: ${prefix} failed:`, err && err.stack ? err.stack : err);
    drop().finally(() => process.exit(1));
  });
  let status = 0;
  try {
    await main(schema);
  } catch (err) {
    console.error(`peers: ${prefix} failed:`, err && err.stack ? err.stack : err);
    status = 1;
  }
  try {
    await drop();
  } catch (err) {
    console.error(`peers: could not drop schema ${schema}:`, err.message);
    status = 1;
  }
  // Libraries leave timers behind (pg-boss' delay loops); exit rather than wait for them.
  process.exit(status);
}

// Phase 1 of every peer: config.events jobs through `addChunk(from, to)` (the library's bulk
// path) in chunks of setting.chunk, setting.chunkParallel at a time, no worker running. Returns
// jobs per second, after checking with `queued()` that every job is there.
export async function measureEnqueue(setting, addChunk, queued) {
  const N = config.events;
  const startedAt = now();
  await inParallel(chunks(N, setting.chunk), setting.chunkParallel, ([from, to]) => addChunk(from, to));
  const rate = (N * 1000) / (now() - startedAt);
  if ((await queued()) !== N) throw new Error('enqueue: not every job is queued');
  return rate;
}

// Phase 2: `start(onHandled)` starts the library's worker with a no-op handler that calls
// onHandled; done when every job was handled and `remaining()` (the library's own record of
// unfinished jobs) is 0. Returns jobs per second, or the rate so far when the drain gives up
// (config.drainDeadlineSeconds, config.drainStallSeconds), logged under `label`.
export async function measureDrain(label, start, remaining) {
  const N = config.events;
  let handled = 0;
  const startedAt = now();
  await start(() => { handled++; });
  const drained = await waitForCount(() => handled, N, startedAt, { deadlineS: config.drainDeadlineSeconds, stallS: config.drainStallSeconds });
  if (drained.finished) {
    await waitUntil(`${label} to record the drained jobs done`, async () => (await remaining()) === 0, 60_000, 5);
    return (N * 1000) / (now() - startedAt);
  }
  log(`${label}: drain stopped after ${(drained.elapsed / 1000).toFixed(1)} s with ${drained.done} of ${N} completed; drain_per_s is the rate so far`);
  return (drained.done * 1000) / drained.elapsed;
}
