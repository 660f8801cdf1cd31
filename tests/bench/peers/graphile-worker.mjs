// graphile-worker: enqueue, drain, end-to-end p99 and transactional enqueue, at its defaults
// and at its best documented settings. One `peer:` line per setting on stdout (see common.mjs).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Logger, makeWorkerUtils, run } from 'graphile-worker';
import {
  adminQuery, businessTable, config, connect, log, measureDrain, measureEnqueue, measureLatency,
  measureTxEnqueue, now, printLine, runWithSchema,
} from './common.mjs';

const require = createRequire(import.meta.url);
const version = JSON.parse(readFileSync(require.resolve('graphile-worker/package.json'), 'utf8')).version;

// Both settings route graphile-worker's log to stderr and drop its info/debug lines: at its
// defaults it logs a line per completed job, which is terminal I/O rather than queue work
// (and stdout carries the result lines). Both also set noHandleSignals so this program's own
// SIGINT/SIGTERM handler can drop the schema.
const quiet = new Logger(() => (level, message) => {
  if (level === 'error' || level === 'warning') console.error(`graphile-worker ${level}: ${message}`);
});

// 'defaults' passes nothing else: concurrency 1, no local queue, one completion statement per
// job, PostgreSQL time, pollInterval 2,000 ms (new jobs also wake it via LISTEN/NOTIFY).
// 'best' (the fastest of the documented knobs tried on a 2-core machine; see README.md):
// concurrency 8 (concurrentJobs), a local queue of 10,000 (preset.worker.localQueue.size: the
// pool locks and fetches jobs in batches of that size), batched completion
// (completeJobBatchDelay 0 and failJobBatchDelay 0: completions issued in the same tick go in
// one statement), useNodeTime, a pool of 12 (concurrency + 4), and addJobs() of 5,000-job
// arrays, 4 in flight.
const SETTINGS = {
  defaults: { run: {}, chunk: 1000, chunkParallel: 1 },
  best: {
    run: {
      concurrency: 8,
      maxPoolSize: 12,
      useNodeTime: true,
      preset: { worker: { localQueue: { size: 10_000 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } },
    },
    chunk: 5000,
    chunkParallel: 4,
    ...config.bestOverride,
  },
};

let utils = null;
let runner = null;

async function stopRunner() {
  if (!runner) return;
  const r = runner;
  runner = null;
  await r.stop();
}

async function stopAll() {
  await stopRunner();
  if (utils) {
    const u = utils;
    utils = null;
    await u.release();
  }
}

async function startRunner(schema, setting, taskList) {
  runner = await run({ connectionString: config.url, schema, logger: quiet, noHandleSignals: true, taskList, ...setting.run });
  runner.promise.catch((err) => log(`graphile-worker runner failed: ${err.message}`));
}

async function measure(schema, settingName) {
  const setting = SETTINGS[settingName];
  await adminQuery(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  utils = await makeWorkerUtils({ connectionString: config.url, schema, logger: quiet, ...(setting.run.maxPoolSize ? { maxPoolSize: setting.run.maxPoolSize } : {}) });
  await utils.migrate();
  await adminQuery(businessTable(schema));
  const admin = await connect();
  try {
    await phases(schema, settingName, setting, admin);
  } finally {
    await admin.end().catch(() => {});
  }
}

async function phases(schema, settingName, setting, admin) {
  const queued = async (task) =>
    (await admin.query(
      `SELECT count(*)::int AS n FROM ${schema}._private_jobs j JOIN ${schema}._private_tasks t ON t.id = j.task_id WHERE t.identifier = $1`,
      [task],
    )).rows[0].n;

  // 1. Enqueue N jobs through addJobs (WorkerUtils' bulk path), no worker running.
  const enqueue = await measureEnqueue(setting, async (from, to) => {
    const specs = [];
    for (let i = from; i < to; i++) specs.push({ identifier: 'drain', payload: { i } });
    await utils.addJobs(specs);
  }, () => queued('drain'));

  // 2. Drain them with a no-op task; done when graphile-worker has deleted every job (a job
  // is complete once its row is gone, which batched completion delays).
  const drain = await measureDrain(`graphile-worker ${settingName}`,
                                   (onHandled) => startRunner(schema, setting, { drain: async () => { onHandled(); } }),
                                   () => queued('drain'));
  await stopRunner();
  await admin.query(`DELETE FROM ${schema}._private_jobs`);

  // 3. End-to-end latency with the worker running: addJob one at a time.
  const received = [];
  await startRunner(schema, setting, { lat: async (payload) => { received.push(now() - payload.sent); } });
  const p99 = await measureLatency((payload) => utils.addJob('lat', payload), received);
  await stopRunner();

  // 4. BEGIN; INSERT business; SELECT add_job(...) on the same client; COMMIT.
  const tx = await measureTxEnqueue(schema, (client, i) =>
    client.query({ name: 'add_job', text: `SELECT ${schema}.add_job('tx', json_build_object('i', $1::int))`, values: [i] }));
  if ((await queued('tx')) !== config.txTotal) throw new Error('tx enqueue: job count does not match the transactions');

  await stopAll();
  printLine({ system: 'graphile-worker', setting: settingName, version, enqueue, drain, p99, tx });
}

await runWithSchema('peers_graphile', async (schema) => {
  for (const setting of config.settings) {
    if (!SETTINGS[setting]) throw new Error(`unknown setting '${setting}'`);
    await measure(schema, setting);
  }
}, stopAll);
