// pg-boss: enqueue, drain, end-to-end p99 and transactional enqueue, at its defaults and at
// its best documented settings. One `peer:` line per setting on stdout (see common.mjs).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import PgBoss from 'pg-boss';
import {
  adminQuery, businessTable, config, connect, log, measureDrain, measureEnqueue, measureLatency,
  measureTxEnqueue, now, printLine, runWithSchema,
} from './common.mjs';

const require = createRequire(import.meta.url);
const version = JSON.parse(readFileSync(require.resolve('pg-boss/package.json'), 'utf8')).version;

// What each setting passes to pg-boss. 'defaults' passes nothing: one work() loop fetching
// one job (teamSize 1) every newJobCheckInterval (2,000 ms) — pg-boss 9 waits out the
// interval after every fetch, so it completes at most one job per 2 s.
// 'best' (the fastest of the documented knobs tried on a 2-core machine; see README.md):
// work({ batchSize: 5000, newJobCheckInterval: 100 }) from 2 work() loops — the handler takes
// an array and pg-boss completes the batch in one statement; 100 ms is the smallest interval
// pg-boss allows, and each loop waits it out after every fetch, so a loop completes at most
// batchSize jobs per 100 ms; two loops let one fetch while the other completes — and bulk
// insert() of 5,000-job arrays, 4 in flight (the default pool of 10 has room for both).
const SETTINGS = {
  defaults: { boss: {}, work: {}, workers: 1, chunk: 1000, chunkParallel: 1 },
  best: {
    boss: {},
    work: { batchSize: 5000, newJobCheckInterval: 100 },
    workers: 2,
    chunk: 5000,
    chunkParallel: 4,
    ...config.bestOverride,
  },
};

let boss = null;
let stopping = false;

async function stopBoss() {
  if (!boss) return;
  const b = boss;
  boss = null;
  stopping = true;
  await b.stop({ graceful: false, destroy: true });
}

async function startWorkers(name, setting, onJob) {
  const handler = setting.work.batchSize
    ? async (jobs) => { for (const job of jobs) onJob(job); }
    : async (job) => { onJob(job); };
  for (let w = 0; w < setting.workers; w++) await boss.work(name, setting.work, handler);
}

async function measure(schema, settingName) {
  const setting = SETTINGS[settingName];
  await adminQuery(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  stopping = false;
  boss = new PgBoss({ connectionString: config.url, schema, ...setting.boss });
  boss.on('error', (err) => { if (!stopping) log(`pg-boss error: ${err.message}`); });
  await boss.start();
  await adminQuery(businessTable(schema));
  const admin = await connect();
  try {
    await phases(schema, settingName, setting, admin);
  } finally {
    await admin.end().catch(() => {});
  }
}

async function phases(schema, settingName, setting, admin) {
  const pending = async (name) =>
    (await admin.query(`SELECT count(*)::int AS n FROM ${schema}.job WHERE name = $1 AND state <> 'completed'`, [name])).rows[0].n;

  // 1. Enqueue N jobs through the bulk path, no worker running.
  const enqueue = await measureEnqueue(setting, async (from, to) => {
    const jobs = [];
    for (let i = from; i < to; i++) jobs.push({ name: 'drain', data: { i } });
    await boss.insert(jobs);
  }, () => pending('drain'));

  // 2. Drain them with a no-op handler; done when pg-boss has marked every job completed.
  const drain = await measureDrain(`pg-boss ${settingName}`, (onHandled) => startWorkers('drain', setting, onHandled),
                                   () => pending('drain'));
  await boss.offWork('drain');
  await admin.query(`DELETE FROM ${schema}.job WHERE name = 'drain' AND state = 'created'`);

  // 3. End-to-end latency with the workers running.
  const received = [];
  await startWorkers('lat', setting, (job) => { received.push(now() - job.data.sent); });
  const p99 = await measureLatency((data) => boss.send('lat', data), received);
  await boss.offWork('lat');

  // 4. BEGIN; INSERT business; send() through the same client (the `db` option); COMMIT.
  const tx = await measureTxEnqueue(schema, (client, i) =>
    boss.send('tx', { i }, { db: { executeSql: (text, values) => client.query(text, values) } }));
  if ((await pending('tx')) !== config.txTotal) throw new Error('tx enqueue: job count does not match the transactions');

  await stopBoss();
  printLine({ system: 'pg-boss', setting: settingName, version, enqueue, drain, p99, tx });
}

await runWithSchema('peers_pgboss', async (schema) => {
  for (const setting of config.settings) {
    if (!SETTINGS[setting]) throw new Error(`unknown setting '${setting}'`);
    await measure(schema, setting);
  }
}, stopBoss);
