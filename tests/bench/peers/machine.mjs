// Prints the machine line table.py puts above the table:
//   machine: cores=<n> node=<version> postgresql=<server_version>
import os from 'node:os';
import { connect } from './common.mjs';

const client = await connect();
try {
  const { rows } = await client.query('SHOW server_version');
  const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  process.stdout.write(`machine: cores=${cores} node=${process.version} postgresql=${rows[0].server_version.split(' ')[0]}\n`);
} finally {
  await client.end();
}
